r"""LCM-LoRA of the shipped miniature Stable Diffusion: latent consistency distillation into a LoRA (notebook 19).

    python scripts/distill_lcm_lora.py                  # train, then measure; refuses to overwrite
    python scripts/distill_lcm_lora.py --overwrite      # retrain and replace the LoRA and the table
    python scripts/distill_lcm_lora.py --evaluate-only  # only re-measure the saved LoRA

Luo et al. 2023b ("LCM-LoRA"): the teacher's UNet stays frozen and only a LoRA of it (Hu et al. 2021, Eq. 3;
:mod:`diffusion_notes.adapters.lora_training`) is trained, by latent consistency distillation (Luo et al. 2023,
Algorithm 1; :func:`diffusion_notes.consistency_distillation.consistency_distillation_loss`) on the frozen
autoencoder's latents of the training digits, one random caption each:

* skipping-step grid :math:`t_n = 20n - 1` (:math:`k = 20`), the teacher's DDIM step from :math:`t_{n+k}` to :math:`t_n`
  with its default classifier-free guidance (scale 7.5, LCM's :math:`\omega = 6.5`) folded in;
* the target network is the student itself without gradient (diffusers' ``train_lcm_distill_lora_sd_wds.py``);
* LoRA on every Linear and convolution of the UNet's blocks (attention, ResNet blocks, time projections,
  resamplers: LCM-LoRA's targets), AdamW, cosine learning rate, one thread, one seeded generator.

The LoRA is saved in kohya's format (``lora_unet_*``, float16 factors) beside the other adapters, loaded back
through ``StableDiffusion.load_lora`` (what ``--lora FILE`` runs), and measured there: the LCM sampler at 1, 2, 4
steps without guidance (it is folded in) against the teacher with DPM++ 2M and PLMS at 2, 4, 8, 50 steps and with the
LCM sampler at 1, 2, 4 (guidance 7.5), by the judge's agreement (:mod:`diffusion_notes.mini_sd.judge`) and FD-digits (:mod:`diffusion_notes.quality`),
written to ``notebooks/data/lcm_lora_mini_sd.json`` for notebook 19. All cells start from the same seed, hence the
same :math:`x_T`, so the LoRA and the teacher at the same number of steps are compared by a paired bootstrap of the
FD-digits difference; "clearly better" means lower by more than two of its standard deviations.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_notes.adapters.lora_training import (attach_lora, kohya_names, kohya_state_dict,  # noqa: E402
                                                   latent_moments, lora_targets)
from diffusion_notes.checkpoints.metadata import read_header  # noqa: E402
from diffusion_notes.consistency_distillation import (consistency_distillation_loss,  # noqa: E402
                                                      skipping_step_timesteps)
from diffusion_notes.mini_sd import judge, load_mini_sd  # noqa: E402
from diffusion_notes.mini_sd.data import caption, load_images, sample_captions  # noqa: E402
from diffusion_notes.models.vae import DiagonalGaussianDistribution  # noqa: E402
from diffusion_notes.quality import features  # noqa: E402
from diffusion_notes.quality.bootstrap import bootstrap, paired_bootstrap  # noqa: E402

LORA_FILE = ROOT / "diffusion_notes" / "mini_sd" / "adapters" / "lcm_lora.safetensors"
TABLE_FILE = ROOT / "notebooks" / "data" / "lcm_lora_mini_sd.json"
GUIDANCE = 7.5  # the miniature's default CFG scale, folded into the teacher's step
TEACHER_STEPS, LCM_STEPS = (2, 4, 8, 50), (1, 2, 4)


def unet_eps(unet, context):
    """``eps(x, t)`` of ``unet`` with the text conditioning ``context`` bound."""
    return lambda x, t: unet(x, t, context=context)


def teacher_eps(unet, context, uncond):
    """``teacher(x, t) -> (eps_uncond, eps_cond)``: both branches of classifier-free guidance in one batch."""
    def eps(x, t):
        e = unet(torch.cat([x, x]), torch.cat([t, t]), context=torch.cat([uncond, context]))
        return e.chunk(2)
    return eps


def distill(steps: int, rank: int, alpha: float, lr: float, batch: int, seed: int, guidance: float,
            log_every: int = 50):
    """Train the LCM-LoRA; returns ``(sd with the LoRA attached, kohya names, wrapped layers, losses, CPU seconds)``."""
    sd = load_mini_sd(torch_dtype=torch.float32, prepack=False).requires_grad_(False)
    teacher = copy.deepcopy(sd.unet).eval()
    images, labels = load_images("train")
    moments = latent_moments(sd, images)
    g = torch.Generator().manual_seed(seed)
    names = kohya_names(sd)
    wrapped = attach_lora(sd.unet, lora_targets(sd.unet, convolutions=True), rank, alpha, g)
    params = [p for m in wrapped.values() for p in (m.down.weight, m.up.weight)]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    acp = sd.schedule.alphas_cumprod.float()
    with torch.no_grad():
        uncond = sd.prompt_encoder.encode([""])[0]
    losses, start = [], time.process_time()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=g)
        z0 = sd.scale_factor * DiagonalGaussianDistribution(moments[idx]).sample(g)
        with torch.no_grad():
            context = sd.prompt_encoder.encode(sample_captions(labels[idx], p_uncond=0.0, generator=g))[0]
        t_start, t_end = skipping_step_timesteps(batch, g)
        noise = torch.randn(z0.shape, generator=g)
        student = unet_eps(sd.unet, context)
        loss = consistency_distillation_loss(student, student, teacher_eps(teacher, context, uncond.expand_as(context)),
                                             z0, noise, t_start, t_end, acp, guidance)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0:
            print(f"  step {step + 1}: loss (last {log_every}) {np.mean(losses[-log_every:]):.5f}  "
                  f"{time.process_time() - start:.0f} s CPU", flush=True)
    sd.unet.eval()
    return sd, names, wrapped, losses, time.process_time() - start


def generate(sd, sampler: str, steps: int, guidance: float, per_digit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_digit`` images of every digit (phrasing 0), as the judge's :func:`~judge.generated_agreement` makes them."""
    prompts = [caption(digit, 0) for digit in range(10)]
    result = sd.txt2img(prompts, steps=steps, sampler=sampler, guidance_scale=guidance, num_images=per_digit,
                        seed=seed, output="array")
    return result.arrays, np.repeat(np.arange(10), per_digit)


def measure(sd, label: str, sampler: str, steps: int, guidance: float, per_digit: int, seed: int) -> tuple[dict, np.ndarray]:
    """One cell of the table: judge agreement and FD-digits (± its bootstrap sd); also the FD-digits features."""
    start = time.process_time()
    arrays, asked = generate(sd, sampler, steps, guidance, per_digit, seed)
    feats = features.digit_features(arrays)
    fd = bootstrap(lambda f: features.fd_digits(features=f, size=32), feats, n_resamples=100, seed=seed)
    cell = {"model": label, "sampler": sampler, "steps": steps, "guidance": guidance, "images": len(asked),
            "agreement": round(float((judge.predicted_digits(arrays) == asked).mean()), 4),
            "fd_digits": round(fd.value, 3), "fd_sd": round(fd.std, 3), "cpu_seconds": round(time.process_time() - start, 1)}
    print(cell, flush=True)
    return cell, feats


def evaluate(lora: Path, per_digit: int, seed: int) -> dict:
    """Every cell from the same seed, so the same x_T: cells are paired image by image (paired bootstrap)."""
    sd = load_mini_sd(torch_dtype=torch.float32)
    results = [measure(sd, "teacher", sampler, steps, GUIDANCE, per_digit, seed)
               for sampler in ("dpmpp_2m", "plms") for steps in TEACHER_STEPS]
    results += [measure(sd, "teacher", "lcm", steps, GUIDANCE, per_digit, seed) for steps in LCM_STEPS]
    sd.load_lora(lora)  # what `--lora FILE` does
    results += [measure(sd, "LCM-LoRA", "lcm", steps, 1.0, per_digit, seed) for steps in LCM_STEPS]
    comparisons = []
    for steps in (2, 4):  # the LCM-LoRA against the teacher's best sampler at the same number of steps
        (mine, f_mine), = [(c, f) for c, f in results if c["model"] == "LCM-LoRA" and c["steps"] == steps]
        best, f_best = min(((c, f) for c, f in results if c["model"] == "teacher" and c["steps"] == steps),
                           key=lambda cf: cf[0]["fd_digits"])
        diff = paired_bootstrap(lambda f: features.fd_digits(features=f, size=32), f_mine, f_best, n_resamples=100,
                                seed=seed)
        comparisons.append({"steps": steps, "teacher_sampler": best["sampler"], "fd_difference": round(diff.value, 3),
                            "fd_difference_sd": round(diff.std, 3), "clearly_better": bool(diff.value < -2 * diff.std)})
        print(comparisons[-1], flush=True)
    return {"cells": [c for c, _ in results], "comparisons": comparisons, "judge_ceiling": round(judge.ceiling(), 4),
            "fd_floor": round(features.floor(size=32), 3), "per_digit": per_digit, "seed": seed}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=LORA_FILE)
    parser.add_argument("--table", type=Path, default=TABLE_FILE)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--evaluate-only", action="store_true")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=8.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--guidance", type=float, default=GUIDANCE, help="the teacher's CFG scale folded into its step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-digit", type=int, default=50, help="images of each digit per measured cell")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not args.evaluate_only:
        if args.out.exists() and not args.overwrite:
            print(f"error: {args.out} exists; pass --overwrite to replace it (or --evaluate-only).", file=sys.stderr)
            return 2
        print(f"LCM-LoRA: rank {args.rank}, alpha {args.alpha}, {args.steps} steps of batch {args.batch}, "
              f"guidance {args.guidance} folded in")
        sd, names, wrapped, losses, seconds = distill(args.steps, args.rank, args.alpha, args.lr, args.batch,
                                                      args.seed, args.guidance)
        tensors = kohya_state_dict(names, wrapped, args.alpha, dtype=torch.float16)
        trainable = sum(m.down.weight.numel() + m.up.weight.numel() for m in wrapped.values())
        command = " ".join(["python scripts/distill_lcm_lora.py", *(argv if argv is not None else sys.argv[1:])])
        metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(args.rank),
                    "ss_network_alpha": str(args.alpha), "ss_max_train_steps": str(args.steps),
                    "ss_learning_rate": str(args.lr), "ss_train_batch_size": str(args.batch), "ss_seed": str(args.seed),
                    "ss_base_model_version": "sd_v1", "ss_sd_model_name": "mini-sd-digits",
                    "diffusion_notes.command": command, "diffusion_notes.cpu_seconds": f"{seconds:.0f}",
                    "diffusion_notes.final_loss": f"{np.mean(losses[-50:]):.5f}",
                    "diffusion_notes.guidance_folded_in": str(args.guidance),
                    "diffusion_notes.style": "LCM-LoRA: sample with the lcm sampler, 1-4 steps, guidance 1",
                    "diffusion_notes.torch": torch.__version__}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(args.out), metadata=metadata)
        print(f"wrote {args.out}: {trainable} parameters in {len(wrapped)} layers, {args.out.stat().st_size} bytes, "
              f"{seconds:.0f} s CPU, loss (last 50) {np.mean(losses[-50:]):.5f}")
    header = read_header(args.out)  # the training record, from the file itself
    training = {"cpu_seconds": int(header["diffusion_notes.cpu_seconds"]), "steps": int(header["ss_max_train_steps"]),
                "rank": int(header["ss_network_dim"]), "batch": int(header["ss_train_batch_size"]),
                "final_loss": float(header["diffusion_notes.final_loss"]), "file_bytes": args.out.stat().st_size,
                "trainable_parameters": sum(v.numel() for k, v in load_file(str(args.out)).items()
                                            if k.endswith(("lora_down.weight", "lora_up.weight"))),
                "command": header["diffusion_notes.command"]}
    table = {"training": training, **evaluate(args.out, args.per_digit, args.seed)}
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Latent-consistency-style distillation of the shipped digits DDPM into a 1-4 step model (notebook 19).

    python scripts/distill_consistency.py --out diffusion_notes/toy/weights/digits_lcm.safetensors

Luo et al. 2023, Algorithm 1 (Latent Consistency Distillation; ``diffusion_notes.consistency_distillation``), in
pixel space on the 8x8 digits:

* the student f_theta(x, t) = c_skip(t) x + c_out(t) x0_hat(eps_theta(x, t, c)) (LCM Eq. 9, samplers.lcm.consistency_function),
  initialised from the teacher, conditioned on the digit label;
* skipping-step grid t_n = 20 n - 1 (LCM's 50 "original inference steps"), k = 20: x_{t_{n+k}} = q_sample(x0), then ONE
  DDIM step of the teacher with classifier-free guidance folded in (scale w = 2) down to t_n (clamped at 0);
* loss ||f_theta(x_{t_{n+k}}, t_{n+k}) - f_theta^-(x_hat_{t_n}, t_n)||^2 against the EMA target network theta^- (decay 0.95);
* AdamW, fixed steps and seed, one thread. The weights are saved in float16 (half the teacher's 1.48 MB).
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path

import torch

from diffusion_notes.consistency_distillation import consistency_distillation_loss, skipping_step_timesteps
from diffusion_notes.toy import NULL_LABEL, load_pretrained, load_split
from diffusion_notes.toy.pretrained import save_checkpoint


def conditioned(model, labels):
    """``eps(x, t)`` of the class-conditional digits model with the labels bound."""
    return lambda x, t: model(x, t, labels)


def cfg_branches(model, labels):
    """``teacher(x, t) -> (eps_uncond, eps_cond)``: both branches of classifier-free guidance in one batch."""
    def eps(x, t):
        return model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([torch.full_like(labels, NULL_LABEL), labels])).chunk(2)
    return eps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the .safetensors file to write (never overwritten)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--guidance", type=float, default=2.0, help="the teacher's CFG scale folded into the target")
    parser.add_argument("--ema", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        print(f"error: {out} exists; choose another --out or delete it first", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    teacher, schedule = load_pretrained()
    acp = schedule.alphas_cumprod.float()
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    target = copy.deepcopy(teacher).requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    images, labels = load_split("train")
    g = torch.Generator().manual_seed(args.seed)
    start, cpu_start = time.time(), time.process_time()
    for step in range(args.steps):
        idx = torch.randint(0, len(labels), (args.batch_size,), generator=g)
        x0, c = images[idx], labels[idx]
        t_start, t_end = skipping_step_timesteps(args.batch_size, g)  # t_{n+k} = 20 j - 1, t_n = t_{n+k} - 20 (>= 0)
        noise = torch.randn(x0.shape, generator=g)
        teacher_eps = cfg_branches(teacher, c)
        loss = consistency_distillation_loss(conditioned(student, c), conditioned(target, c), teacher_eps, x0, noise,
                                             t_start, t_end, acp, args.guidance)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p_t, p_s in zip(target.parameters(), student.parameters()):
                p_t.lerp_(p_s, 1 - args.ema)
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.5f}  {time.time() - start:6.1f} s", flush=True)
    wall, cpu = time.time() - start, time.process_time() - cpu_start
    command = "python scripts/distill_consistency.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    half = copy.deepcopy(target).half()  # LCM samples with the target (EMA) network
    save_checkpoint(half, out, "linear", 1000, extra={"command": command, "kind": "consistency (LCM) student of digits_ddpm",
                                                       "guidance_folded_in": args.guidance, "steps": args.steps, "lr": args.lr,
                                                       "ema": args.ema, "seed": args.seed, "wall_seconds": f"{wall:.1f}",
                                                       "cpu_seconds": f"{cpu:.1f}", "final_loss": f"{loss.item():.5f}",
                                                       "torch": torch.__version__})
    print(f"wrote {out} ({wall:.1f} s wall, {cpu:.1f} s CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

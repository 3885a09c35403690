"""Notebook 13's reduced miniature, trained longer than the notebook can, with the judge's reading logged on the way.

    PYTHONPATH=. python scripts/train_notebook_11.py [--out notebooks/data/11_training_run] [--overwrite]

The notebook trains for seconds and shows the start of the run; this script runs the same recipe (the notebook's
autoencoder and tokenizer, then the UNet and the text encoder jointly on LDM Eq. 2 with caption dropout and an EMA,
as ``diffusion_notes/mini_sd/train.py``) for ``--steps`` steps, on one thread. At each step of ``--checkpoints`` it
samples the EMA weights (PLMS 25 steps, guidance 5, 3 images per digit, seed 1) and the judge reads them. It writes

* ``log.json``: the recipe, and per checkpoint the step, the CPU seconds so far, autoencoder included, judging excluded (``time.process_time``), the mean
  loss of the last 50 steps, the judge's agreement and the digit it read in each image;
* ``samples.npz``: the 30 sampled images of every checkpoint (8x8 RGB, uint8): what the notebook draws;
* with ``--save-weights``, ``final.safetensors`` + ``tokenizer/``: the last EMA weights in fp16 as an original SD
  single file (10 MB, so not committed; ``StableDiffusion.from_single_file(path, tokenizer=...)`` loads it).

The notebook trains the first 200 steps itself and compares its judge's readings with this log's.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffusion_notes.mini_sd import judge
from diffusion_notes.mini_sd.data import WORDS, caption, load_images
from diffusion_notes.models.config import AutoencoderConfig, UNetConfig
from diffusion_notes.models.vae import AutoencoderKL, DiagonalGaussianDistribution
from diffusion_notes.toy.train import update_ema
from diffusion_notes.training import (assemble_stable_diffusion, build_text_encoder, build_word_tokenizer,
                                      latent_diffusion_loss, measure_scale_factor, vae_loss)


@dataclass(frozen=True)
class Recipe:
    """The reduced recipe. ``templates``: the caption phrasings used (indices of ``mini_sd.data.TEMPLATES``)."""

    size: int = 8
    vae_steps: int = 150
    model_channels: int = 64
    transformer_depth: tuple = (1, 1)
    text_layers: int = 3
    templates: tuple = (0,)
    p_uncond: float = 0.1
    batch: int = 64
    lr: float = 1e-3
    ema_decay: float = 0.995
    steps: int = 800


def captions_for(labels: torch.Tensor, recipe: Recipe, generator: torch.Generator) -> list[str]:
    """A caption per label in one of ``recipe.templates``; ``""`` with probability ``p_uncond`` (CFG Alg. 1)."""
    phrasing = torch.randint(0, len(recipe.templates), (len(labels),), generator=generator)
    dropped = torch.rand(len(labels), generator=generator) < recipe.p_uncond
    return ["" if drop else caption(int(label), recipe.templates[int(k)])
            for label, k, drop in zip(labels, phrasing, dropped)]


def judge_samples(sd) -> tuple[np.ndarray, np.ndarray]:
    """30 images (3 per digit, "a handwritten zero" ...) and the digit the judge reads in each."""
    prompts = [caption(d) for d in range(10)]
    with torch.no_grad():
        arrays = sd.txt2img(prompts, steps=25, guidance_scale=5.0, seed=1, num_images=3, output="array").arrays
    return (arrays * 255).round().astype(np.uint8), judge.predicted_digits(arrays)


def train(recipe: Recipe, checkpoints: list[int], out: Path, save_weights: bool = False) -> None:
    torch.set_num_threads(1)
    cpu_start = time.process_time()
    images, labels = load_images("train", size=recipe.size)
    torch.manual_seed(0)
    vae = AutoencoderKL(AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1))   # f = 2: 8x8 -> 4x4x4
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(recipe.vae_steps):
        idx = torch.randint(0, len(images), (32,), generator=g)
        loss, _, _ = vae_loss(vae, images[idx], kl_weight=1e-6, generator=g)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    vae.eval().requires_grad_(False)
    scale_factor = measure_scale_factor(vae, images, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(images))

    tokenizer = build_word_tokenizer(WORDS, out / "tokenizer" if save_weights else Path(tempfile.mkdtemp()) / "tokenizer")
    text_encoder = build_text_encoder(tokenizer, hidden_size=64, num_layers=recipe.text_layers, num_heads=4)
    unet_config = UNetConfig(model_channels=recipe.model_channels, channel_mult=(1, 2), num_res_blocks=1,
                             transformer_depth=recipe.transformer_depth, context_dim=64, num_heads=4)
    sd = assemble_stable_diffusion(unet_config, vae, text_encoder, tokenizer, scale_factor,
                                   native_size=(recipe.size, recipe.size))
    trained = nn.ModuleList([sd.unet, text_encoder]).train().requires_grad_(True)
    ema = copy.deepcopy(trained).requires_grad_(False)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=recipe.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.steps)
    g = torch.Generator().manual_seed(0)
    losses, log, samples, judging = [], [], {}, 0.0
    for step in range(1, recipe.steps + 1):
        idx = torch.randint(0, len(moments), (recipe.batch,), generator=g)
        z0 = scale_factor * DiagonalGaussianDistribution(moments[idx]).sample(g)
        loss = latent_diffusion_loss(sd, z0, captions_for(labels[idx], recipe, g), g)      # LDM Eq. 2 / 3
        optimizer.zero_grad(); loss.backward(); optimizer.step(); schedule.step()
        update_ema(ema, trained, recipe.ema_decay, step - 1)
        losses.append(loss.item())
        if step in checkpoints:
            judge_start = time.process_time()
            evaluated = copy.deepcopy(sd)
            nn.ModuleList([evaluated.unet, evaluated.prompt_encoder.text_encoders[0]]).load_state_dict(ema.state_dict())
            evaluated.eval().requires_grad_(False)
            arrays, digits = judge_samples(evaluated)
            samples[f"step_{step}"] = arrays
            judging += time.process_time() - judge_start
            log.append({"step": step, "cpu_s": round(time.process_time() - cpu_start - judging, 1),
                        "loss_last_50": round(float(np.mean(losses[-50:])), 4),
                        "agreement": float((digits == np.repeat(np.arange(10), 3)).mean()),
                        "digits_read": digits.tolist()})
            print(log[-1]["step"], log[-1]["cpu_s"], log[-1]["loss_last_50"], log[-1]["agreement"], flush=True)
            if save_weights and step == max(checkpoints):
                evaluated.to(torch.float16).save_single_file(out / "final.safetensors", overwrite=True)
    np.savez_compressed(out / "samples.npz", **samples)
    record = {"recipe": asdict(recipe), "threads": 1, "torch": torch.__version__,
              "checkpoints": log,
              "judging": "PLMS 25 steps, guidance 5, seed 1, 3 images per digit, prompts 'a handwritten zero' ..."}
    (out / "log.json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="notebooks/data/11_training_run")
    parser.add_argument("--steps", type=int, default=Recipe.steps)
    parser.add_argument("--checkpoints", default="50,100,200,300,400,600,800")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--save-weights", action="store_true", help="also write final.safetensors and tokenizer/")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"error: {out} is not empty; pass --overwrite or choose another --out", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = sorted({int(s) for s in args.checkpoints.split(",") if int(s) <= args.steps} | {args.steps})
    train(Recipe(steps=args.steps), checkpoints, out, args.save_weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())

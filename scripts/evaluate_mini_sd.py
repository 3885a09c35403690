"""Measure the figures of diffusion_notes/mini_sd/MODEL_CARD.md on the shipped miniature (one thread).

    PYTHONPATH=. python scripts/evaluate_mini_sd.py
"""

import json
import time

import numpy as np
import torch

from diffusion_notes.checkpoints.metadata import read_header
from diffusion_notes.mini_sd import judge, load_mini_sd, tokenizer_path, weights_path
from diffusion_notes.mini_sd.data import TEMPLATES, load_images

torch.set_num_threads(1)
header = read_header(weights_path())
print({k: v for k, v in header.items() if k != "mini_sd.train_config"})
print("train_config", json.loads(header["mini_sd.train_config"]))
size = weights_path().stat().st_size + sum(f.stat().st_size for f in tokenizer_path().iterdir())
print(f"file {weights_path().stat().st_size / 1e6:.2f} MB, with tokenizer {size / 1e6:.2f} MB")
sd = load_mini_sd(torch_dtype=torch.float32)
for name, net in [("UNet", sd.unet), ("VAE", sd.vae), ("text encoder", sd.text_encoders[0])]:
    print(f"{name}: {sum(p.numel() for p in net.parameters()):,} parameters")
print(f"judge ceiling (real test digits, 8 -> 32 -> 8): {judge.ceiling():.4f}")
x, y = load_images("test")
with torch.no_grad():
    rec = sd.vae.decode(sd.vae.encode(x).mode()).clamp(-1, 1)
print(f"VAE on test digits: mean |x - D(E(x))| {(rec - x).abs().mean():.4f}, PSNR "
      f"{10 * torch.log10(4 / ((rec - x) ** 2).mean()):.1f} dB, judge on reconstructions {judge.agreement(rec, y):.4f}")


def run(model, label, **kwargs):
    start = time.process_time()
    agreement, predicted = judge.generated_agreement(model, **kwargs)
    per_digit = (predicted == np.arange(10)[:, None]).mean(axis=1)
    print(f"{label} {kwargs}: agreement {agreement:.3f}  per digit {np.round(per_digit, 2).tolist()}  "
          f"({time.process_time() - start:.1f} s CPU)")
    return agreement


for scale in (7.5, 3.0, 1.0):
    run(sd, "fp32", per_digit=10, guidance_scale=scale, seed=0)
bf16 = load_mini_sd(torch_dtype=torch.bfloat16)
run(bf16, "bf16", per_digit=10, guidance_scale=7.5, seed=0)
run(bf16, "bf16", per_digit=10, guidance_scale=1.0, seed=0)
for phrasing in range(len(TEMPLATES)):
    run(sd, f"fp32 phrasing {TEMPLATES[phrasing]!r}", per_digit=3, guidance_scale=7.5, seed=0, phrasing=phrasing)
print("test seed 1234, 5 per digit:")
for scale in (7.5, 1.0):
    run(sd, "fp32", per_digit=5, guidance_scale=scale, seed=1234)
run(bf16, "bf16", per_digit=5, guidance_scale=7.5, seed=1234)

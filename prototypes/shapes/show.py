"""Save a PNG grid: rows of real held-out renders and their reconstructions (and generated samples if saved)."""
import sys

import numpy as np
import torch
from PIL import Image

from diffusion_notes.mini_sd_shapes import judge, world
from diffusion_notes.models.config import AutoencoderConfig
from diffusion_notes.models.vae import AutoencoderKL

torch.set_num_threads(1)
vae = AutoencoderKL(AutoencoderConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1))
vae.load_state_dict(torch.load(sys.argv[1]))
vae.eval()
scenes = world.sample_scenes(16, torch.Generator().manual_seed(4242), split="held_out")
x = world.render(scenes)
with torch.no_grad():
    r = vae.decode(vae.encode(x).mode())
print("judge on these 16 reconstructions:", judge.accuracy(r, scenes))
rows = [((t.clamp(-1, 1).permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8) for t in (x, r)]
for path in sys.argv[3:]:
    rows.append(np.round(np.load(path)[:16] * 255).astype(np.uint8))
grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(sys.argv[2])

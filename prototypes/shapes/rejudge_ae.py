"""Re-judge a saved first stage (ae_gate.py --save) with the current judge, on ae_gate.py's own evaluation
scenes (seed 12345: 500 held-out, then 500 seen); also the moment-only shape reading and per-shape accuracy."""
import json
import sys

import torch

from diffusion_notes.mini_sd_shapes import judge, world
from diffusion_notes.models.config import AutoencoderConfig
from diffusion_notes.models.vae import AutoencoderKL

torch.set_num_threads(1)
path, f, z = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mult = {2: (1, 2), 4: (1, 2, 2), 8: (1, 1, 2, 2)}[f]
vae = AutoencoderKL(AutoencoderConfig(ch=32, ch_mult=mult, num_res_blocks=1, z_channels=z, embed_dim=z))
vae.load_state_dict(torch.load(path))
vae.eval()
g = torch.Generator().manual_seed(12345)
held = world.sample_scenes(500, g, split="held_out")
seen = world.sample_scenes(500, g, split="train")
for name, scenes in (("held", held), ("seen", seen)):
    with torch.no_grad():
        rec = vae.decode(vae.encode(world.render(scenes)).mode())
    acc = judge.accuracy(rec, scenes)
    feats = judge.features(rec)
    cal = judge.calibration()
    moments = torch.cdist((feats["shape_features"] - cal.mean) / cal.std, cal.shape_means).argmin(1)
    templates = judge.template_distances(feats).argmin(1)
    per_shape = {world.SHAPES[k]: round(float((judge.judge(rec)["shape"][scenes.shape.numpy() == k] == k).mean()), 3)
                 for k in range(4) if (scenes.shape == k).any()}
    print(json.dumps({"checkpoint": path, "set": name, "strict": acc,
                      "shape_moments_only": float((moments == scenes.shape).float().mean()),
                      "shape_templates_only": float((templates == scenes.shape).float().mean()),
                      "strict_shape_per_shape": per_shape}))

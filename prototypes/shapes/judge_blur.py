"""How strict is the judge? Its shape reading on real renders blurred by a Gaussian of sigma pixels
(a stand-in for an autoencoder's softness), per shape and size."""
import json

import torch
import torch.nn.functional as F

from diffusion_notes.mini_sd_shapes import judge, world

torch.set_num_threads(1)
scenes = world.sample_scenes(1000, torch.Generator().manual_seed(31), split="all")
x = world.render(scenes)
for sigma in (0.0, 0.5, 0.75, 1.0):
    if sigma:
        r = torch.arange(-3, 4, dtype=torch.float32)
        k = torch.exp(-r**2 / (2 * sigma**2)); k = k / k.sum()
        y = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), k.view(1, 1, 1, 7).repeat(3, 1, 1, 1), groups=3)
        y = F.conv2d(F.pad(y, (0, 0, 3, 3), mode="replicate"), k.view(1, 1, 7, 1).repeat(3, 1, 1, 1), groups=3)
    else:
        y = x
    read = judge.judge(y)["shape"]
    cells = {f"{world.SIZES[s]} {world.SHAPES[k]}": round(float((read[(scenes.shape == k).numpy() & (scenes.size == s).numpy()] == k).mean()), 3)
             for s in range(2) for k in range(4)}
    print(json.dumps({"sigma": sigma, **judge.accuracy(y, scenes), "shape_by_cell": cells}))

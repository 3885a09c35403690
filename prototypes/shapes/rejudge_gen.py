"""Judge the images stage2.py saved (gen_*.npz) with the current judge: the generation gate's numbers."""
import glob
import json
import sys

import numpy as np
import torch

from diffusion_notes.mini_sd_shapes import judge, world

torch.set_num_threads(1)
folder = sys.argv[1] if len(sys.argv) > 1 else "prototypes/shapes/logs"
for path in sorted(glob.glob(f"{folder}/gen_*.npz")):
    d = np.load(path)
    n = len(d["colour"])
    scenes = world.Scenes(**{k: torch.from_numpy(d[k]) for k in judge.ATTRIBUTES}, rgb=torch.zeros(n, 3),
                          centre=torch.zeros(n, 2), width=torch.zeros(n), background=torch.zeros(n))
    acc = judge.accuracy(list(d["arrays"]), scenes)
    print(json.dumps({"file": path.split("/")[-1], "n": n, **acc}))

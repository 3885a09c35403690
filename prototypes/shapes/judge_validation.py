"""Validate the attribute judge on fresh real renders (seeds other than its calibration seed 20)."""
import json
import time

import torch

from diffusion_notes.mini_sd_shapes import judge

torch.set_num_threads(1)
t = time.process_time()
judge.calibration()
print(json.dumps({"calibration_cpu_s": round(time.process_time() - t, 2)}))
for split, seed, n in [("all", 1, 5000), ("held_out", 2, 2000), ("train", 3, 2000)]:
    t = time.process_time()
    acc = judge.validate(seed=seed, n=n, split=split)
    print(json.dumps({"split": split, "seed": seed, "n": n, **acc, "cpu_s": round(time.process_time() - t, 2)}))

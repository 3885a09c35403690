"""Benchmark 3: a whole txt2img call on the CPU, ours vs diffusers' ``StableDiffusionPipeline``, fp32.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.txt2img --sizes 256 512

SD 1.5-shaped random weights shared by both pipelines (``gpu.ours_on_their_weights``), 20 steps of
``dpmpp_2m`` (diffusers: ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)``;
PLMS / ``PNDMScheduler(skip_prk_steps=True)`` where dpmpp_2m is not registered), guidance 7.5, batch 1,
the same x_T. The wall time covers the text encoder, every step and the VAE decode; calls alternate
ours / diffusers, one warm-up round first.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from .common import configure_threads, machine, table
from .gpu import measure, ours_on_their_weights
from .random_models import diffusers_pipeline


def main(argv=None) -> str:
    from diffusion_notes.samplers import SAMPLERS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--sizes", type=int, nargs="+", default=[256], help="image sides (default 256)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    configure_threads(args.threads)
    sampler = "dpmpp_2m" if "dpmpp_2m" in SAMPLERS else "plms"
    torch.manual_seed(0)
    pipe = diffusers_pipeline("sd1", args.size == "full", Path(tempfile.mkdtemp(prefix="txt2img-")))
    pipe.set_progress_bar_config(disable=True)
    sd = ours_on_their_weights(pipe, "sd1")
    rows = []
    for side in args.sizes:
        r = measure(pipe, sd, "sd1", sampler, args.steps, 1, side, args.repeats, torch.device("cpu"), args.warmup)
        o, d = r["ours"]["seconds"], r["diffusers"]["seconds"]
        rows.append([f"{side}x{side}", f"{sampler} {args.steps}", f"{1 / r['ours']['images_per_s']:.3g}",
                     f"{min(o):.3g}-{max(o):.3g}", f"{1 / r['diffusers']['images_per_s']:.3g}",
                     f"{min(d):.3g}-{max(d):.3g}", f"{1 / r['throughput_ratio']:.2f}"])
    out = table(["image", "sampler", "ours s", "ours spread", "diffusers s", "diffusers spread", "ours/diffusers"], rows)
    print(f"txt2img, CFG 7.5, batch 1, fp32, median of {args.repeats} alternated calls; {machine()}")
    print(out)
    return out


if __name__ == "__main__":
    main()

"""Benchmark 4: loading an SD 1.5-shaped fp16 single file for the CPU, then one UNet step, each in a fresh process.

    python -m benchmarks.loading make /tmp/sd15          # writes sd15-fp16.safetensors (2.0 GiB) + config/
    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.loading run /tmp/sd15 --rounds 3

``make`` writes a random-weight fp16 checkpoint in the original single-file layout and, next to it, a
diffusers folder holding only the configs and the tokenizer (``config/``): diffusers'
``StableDiffusionPipeline.from_single_file(path, config=..., local_files_only=True)`` reads that
offline; ours reads the same file with ``StableDiffusion.from_single_file(path, tokenizer=...)``.

``run`` starts one process per load, alternating the contestants round by round. Each child imports
its library first (not timed), then times the load call, then one UNet forward (batch 2, 4x32x32).
Its peak resident memory is the kernel's ``ru_maxrss`` for that child, taken with ``os.wait4`` (the
number ``/usr/bin/time -v`` prints as "Maximum resident set size").
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

FILE = "sd15-fp16.safetensors"
#: name -> (library, precision). "default": this CPU's default (diffusion_notes.precision).
CONTESTANTS = {"ours fp32": ("ours", "fp32"), "diffusers fp32": ("diffusers", "fp32"), "ours bf16": ("ours", "bf16"),
               "ours default": ("ours", "auto")}


def make(folder: Path, size: str = "full") -> Path:
    """Write ``folder/sd15-fp16.safetensors`` and ``folder/config`` (configs and tokenizer, no weights)."""
    import torch

    from diffusion_notes.stable_diffusion import StableDiffusion

    from .random_models import random_sd15_pipeline

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config"
    pipe = random_sd15_pipeline(size, tokenizer_folder=folder / "tokenizer-src", dtype=torch.float16)
    pipe.save_pretrained(config)
    del pipe
    StableDiffusion.from_pretrained(config, torch_dtype=torch.float16).save_single_file(folder / FILE, overwrite=True)
    for weights in config.glob("*/*.safetensors"):
        weights.unlink()  # diffusers reads the weights from the single file; the folder gives the configs
    shutil.rmtree(folder / "tokenizer-src")
    return folder / FILE


def one(library: str, precision: str, folder: Path, side: int) -> dict:
    """In this (fresh) process: import, then time the load and one UNet forward."""
    import torch

    from diffusion_notes.precision import resolve_dtype

    dtype = resolve_dtype(precision, "cpu")
    if library == "ours":
        from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401  (imported before the clock starts)

        from diffusion_notes.stable_diffusion import StableDiffusion

        start = time.perf_counter()
        sd = StableDiffusion.from_single_file(folder / FILE, tokenizer=folder / "config", torch_dtype=dtype)
        load_s = time.perf_counter() - start
        unet, width = sd.unet, sd.config.unet.context_dim

        def step(x, t, c):
            return unet(x, t, c)
    else:
        from diffusers import StableDiffusionPipeline

        start = time.perf_counter()
        pipe = StableDiffusionPipeline.from_single_file(str(folder / FILE), config=str(folder / "config"),
                                                        local_files_only=True, torch_dtype=dtype)
        load_s = time.perf_counter() - start
        unet, width = pipe.unet, pipe.unet.config.cross_attention_dim

        def step(x, t, c):
            return unet(x, t, encoder_hidden_states=c).sample

    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 4, side, side, generator=g).to(dtype), torch.randn(2, 77, width, generator=g).to(dtype)
    start = time.perf_counter()
    with torch.inference_mode():
        step(x, torch.tensor([981, 981]), c)
    return {"load_s": load_s, "step_s": time.perf_counter() - start, "dtype": str(dtype)}


def _child(name: str, folder: Path, side: int, threads: int | None) -> tuple[dict, float]:
    """(the child's result, its peak RSS in GiB)."""
    library, precision = CONTESTANTS[name]
    command = [sys.executable, "-m", "benchmarks.loading", "one", library, precision, str(folder), "--side", str(side)]
    if threads:
        command += ["--threads", str(threads)]
    from .common import timed_child_json

    _, rss, result = timed_child_json(command)
    return result, rss


def run(folder: Path, rounds: int, names: list[str], side: int, threads: int | None) -> str:
    from .common import machine, table

    results = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            results[name].append(_child(name, folder, side, threads))
    reference = results.get("diffusers fp32")

    def values(name, key):
        return [rss if key == "rss" else r[key] for r, rss in results[name]]

    rows = []
    for name in names:
        load, rss = statistics.median(values(name, "load_s")), statistics.median(values(name, "rss"))
        row = [name, results[name][0][0]["dtype"].removeprefix("torch."), f"{load:.3g}",
               f"{min(values(name, 'load_s')):.3g}-{max(values(name, 'load_s')):.3g}", f"{rss:.2f}",
               f"{min(values(name, 'rss')):.2f}-{max(values(name, 'rss')):.2f}",
               f"{statistics.median(values(name, 'step_s')):.3g}"]
        if reference:
            ref_load = statistics.median(values("diffusers fp32", "load_s"))
            ref_rss = statistics.median(values("diffusers fp32", "rss"))
            row += [f"{load / ref_load:.2f}", f"{rss / ref_rss:.2f}"]
        rows.append(row)
    headers = ["contestant", "weights", "load s", "load spread", "peak RSS GiB", "RSS spread", "UNet step s"]
    if reference:
        headers += ["load / diffusers fp32", "RSS / diffusers fp32"]
    size = (folder / FILE).stat().st_size / 2**30
    import torch  # noqa: F401  (for machine())

    print(f"Loading a {size:.2f} GiB fp16 single file, then one UNet forward (2x4x{side}x{side}); median of {rounds} "
          f"alternated rounds, one fresh process each; {machine()}")
    out = table(headers, rows)
    print(out)
    return out


def main(argv=None) -> str | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="write the random fp16 checkpoint and its config folder")
    m.add_argument("folder", type=Path)
    m.add_argument("--size", choices=["full", "tiny"], default="full")
    r = sub.add_parser("run", help="time the loads, one fresh process each")
    r.add_argument("folder", type=Path)
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--contestants", nargs="+", default=["ours fp32", "diffusers fp32", "ours bf16", "ours default"],
                   choices=list(CONTESTANTS))
    r.add_argument("--side", type=int, default=32)
    r.add_argument("--threads", type=int, default=None)
    o = sub.add_parser("one", help="(internal) one load in this process; prints JSON")
    o.add_argument("library", choices=["ours", "diffusers"])
    o.add_argument("precision")
    o.add_argument("folder", type=Path)
    o.add_argument("--side", type=int, default=32)
    o.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.command == "make":
        print(make(args.folder, args.size))
        return None
    if args.command == "run":
        return run(args.folder, args.rounds, args.contestants, args.side, args.threads)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(one(args.library, args.precision, args.folder, args.side)))
    return None


if __name__ == "__main__":
    main()

"""Benchmark 1: one forward of the SD 1.5 UNet (859.5M parameters), ours vs diffusers, on the CPU.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.unet_forward            # full size, 4x32x32 and 4x64x64
    python -m benchmarks.unet_forward --precisions fp32 default bf16     # also our default and bf16

Both UNets hold the same random tensors (``common.unet_pair``); batch 2 is the CFG pair. Each round
runs ours then diffusers', so both see the same load on a shared machine; the table gives medians
over the rounds, the min-max spread, and the relative error ``||ours - diffusers|| / ||diffusers||``
of the output (diffusers always in fp32, its CPU default).
"""

from __future__ import annotations

import argparse

import torch

from diffusion_notes.precision import default_dtype, dtype_name

from .common import (alternate, configure_threads, machine, ours_holding, requested_dtypes, run_ours, run_theirs, table,
                     unet_inputs, unet_pair)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["full", "tiny"], default="full", help="tiny: the smoke test's UNet")
    p.add_argument("--sides", type=int, nargs="+", default=[32, 64], help="latent sides (default 32 64)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--precisions", nargs="+", default=["fp32", "default"],
                   help="our precisions: fp32, bf16, fp16, default (this CPU's default)")
    p.add_argument("--repeats", type=int, default=4, help="timed rounds (default 4)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--plain", action="store_true",
                   help="also time ours with plain nn.Conv2d (without models.prepacked, the loaders' CPU default)")
    args = p.parse_args(argv)
    configure_threads(args.threads)

    ours, theirs, context_dim = unet_pair(args.size)
    plain = ours_holding(theirs, prepack=False) if args.plain else None
    cpu_default = default_dtype("cpu")
    dtypes = requested_dtypes(args.precisions)
    rows = []
    for dtype in dtypes:  # fp32 first: ours shares diffusers' tensors until it is cast
        ours = ours.to(dtype)
        plain = plain.to(dtype) if plain is not None else None
        label = dtype_name(dtype) + (" (our default)" if dtype == cpu_default else "")
        for side in args.sides:
            x, t, context = unet_inputs(args.batch, side, context_dim)
            contestants = {"ours": ours, "ours, plain nn.Conv2d": plain}
            contestants = {name: unet for name, unet in contestants.items() if unet is not None}
            with torch.inference_mode():
                reference = run_theirs(theirs, x, t, context)
                errors = {name: relative_error(run_ours(unet, x, t, context), reference)
                          for name, unet in contestants.items()}
            runs = {name: (lambda unet=unet: run_ours(unet, x, t, context)) for name, unet in contestants.items()}
            runs["diffusers"] = lambda: run_theirs(theirs, x, t, context)
            timings = alternate(runs, args.repeats, args.warmup)
            print(f"  measured {side}x{side} in {label}", flush=True)
            for name in contestants:
                rows.append([f"{args.batch}x4x{side}x{side}", label if name == "ours" else f"{label}, plain nn.Conv2d",
                             timings.median(name), timings.spread(name), timings.median("diffusers"),
                             timings.spread("diffusers"), f"{timings.median(name) / timings.median('diffusers'):.2f}",
                             f"{errors[name]:.1e}"])
    out = table(["latents", "ours in", "ours s", "ours spread", "diffusers fp32 s", "diffusers spread",
                 "ours/diffusers", "rel. error"], rows)
    params = sum(p.numel() for p in theirs.parameters()) / 1e6
    print(f"UNet forward, {params:.1f}M parameters, median of {args.repeats} alternated rounds; {machine()}")
    print(f"our CPU default here: {dtype_name(cpu_default)}")
    print(out)
    return out


if __name__ == "__main__":
    main()

"""Benchmark 8: how close the UNet forward runs to this CPU's peak, and where the rest of the time goes.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.unet_flops --sides 32 64 --precisions fp32 default

* **Work**: the floating-point operations of one forward, counted by ``torch.utils.flop_counter.FlopCounterMode``
  on our UNet with plain ``nn.Conv2d`` (the counter knows ``aten.convolution``, matrix products and
  attention; a multiply-add counts 2). Prepacking changes the weight layout, not the arithmetic.
* **Peak**: a large matrix product (``torch.mm``, 4096x4096x4096 by default) in the same dtype and thread count:
  the rate this CPU reaches on the best-shaped work there is (fp32: MKL sgemm; bf16: oneDNN, AMX where present).
* **Achieved**: the work over the median time of the UNet forward as the loaders leave it (prepacked
  convolutions), batch 2 (the CFG pair).
* **Where the rest goes**: ``torch.profiler`` self CPU time per operator, grouped into classes
  (convolution, linear layers, attention, normalisation, element-wise and layout, other).
* ``--against-diffusers``: the same profile of diffusers' ``UNet2DConditionModel`` on the same weights, in
  fp32 (its default), with seconds per class for both sides: where a ratio of forward times comes from.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from diffusion_notes.precision import default_dtype, dtype_name

from .common import (configure_threads, machine, ours_holding, requested_dtypes, run_ours, run_theirs, table,
                     unet_inputs)
from .random_models import sd15_unet

#: operator name fragments -> class (first match wins)
CLASSES = (("convolution", ("conv",)), ("linear", ("addmm", "linear", "aten::mm", "aten::bmm", "matmul")),
           ("attention", ("attention", "sdpa", "flash")), ("normalisation", ("norm",)),
           ("element-wise and layout", ("add", "mul", "silu", "gelu", "copy", "contiguous", "cat", "to", "clone",
                                        "view", "reshape", "permute", "transpose", "div", "sub", "chunk", "empty",
                                        "fill", "sigmoid", "exp", "cos", "sin", "arange", "index", "expand")))


def op_class(name: str) -> str:
    lowered = name.lower()
    for label, fragments in CLASSES:
        if any(f in lowered for f in fragments):
            return label
    return "other"


def count_flops(unet, x, t, context) -> float:
    """Floating-point operations of one forward (FlopCounterMode; a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        run_ours(unet, x, t, context)
    return float(counter.get_total_flops())


def gemm_peak(dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of ``torch.mm`` on two ``n x n`` matrices in ``dtype`` (median of ``repeats`` after one warm-up)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
    torch.mm(a, b)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(seconds)


def time_forward(unet, x, t, context, repeats: int, warmup: int) -> list[float]:
    seconds = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            run_ours(unet, x, t, context)
            if i >= warmup:
                seconds.append(time.perf_counter() - start)
    return seconds


def class_seconds(unet, x, t, context, run=run_ours) -> dict[str, float]:
    """Self CPU seconds of one forward per operator class (largest first), ``run`` calling the network."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        run(unet, x, t, context)
    by_class = defaultdict(float)
    for event in prof.key_averages():
        by_class[op_class(event.key)] += event.self_cpu_time_total / 1e6
    return dict(sorted(by_class.items(), key=lambda kv: -kv[1]))


def profile_classes(unet, x, t, context) -> dict[str, float]:
    """Share of the forward's self CPU time per operator class."""
    seconds = class_seconds(unet, x, t, context)
    total = sum(seconds.values())
    return {k: v / total for k, v in seconds.items()}


def compare_profiles(ours, theirs, x, t, context) -> list[list[str]]:
    """Per operator class: self CPU seconds of ours and of diffusers' forward, and their ratio (one profiled
    forward each, after one unprofiled warm-up each)."""
    with torch.inference_mode():
        run_ours(ours, x, t, context)
        run_theirs(theirs, x, t, context)
    a, b = class_seconds(ours, x, t, context), class_seconds(theirs, x, t, context, run_theirs)
    rows = [[k, f"{a.get(k, 0.0):.3f}", f"{b.get(k, 0.0):.3f}", f"{a.get(k, 0.0) / b[k]:.2f}" if b.get(k) else "-"]
            for k in sorted(set(a) | set(b), key=lambda k: -b.get(k, 0.0))]
    total_a, total_b = sum(a.values()), sum(b.values())
    return rows + [["all", f"{total_a:.3f}", f"{total_b:.3f}", f"{total_a / total_b:.2f}"]]


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["full", "tiny"], default="full", help="tiny: the smoke test's UNet")
    p.add_argument("--sides", type=int, nargs="+", default=[32, 64], help="latent sides (default 32 64)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--precisions", nargs="+", default=["fp32", "default"], help="fp32, bf16, default")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--gemm", type=int, default=4096, help="side of the peak-measuring matrix product")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--against-diffusers", action="store_true",
                   help="also profile diffusers' UNet in fp32 and compare seconds per operator class")
    args = p.parse_args(argv)
    threads = configure_threads(args.threads)
    torch.manual_seed(0)
    theirs = sd15_unet(args.size == "full", tiny_context_dim=32).eval().requires_grad_(False)
    plain = ours_holding(theirs, prepack=False)
    context_dim = plain.config.context_dim
    cpu_default = default_dtype("cpu")
    dtypes = requested_dtypes(args.precisions)
    rows, profiles, comparisons = [], [], []
    for dtype in dtypes:
        peak = gemm_peak(dtype, args.gemm)
        prepacked = ours_holding(theirs, prepack=True).to(dtype)
        label = dtype_name(dtype) + (" (our default)" if dtype == cpu_default else "")
        for side in args.sides:
            x, t, context = unet_inputs(args.batch, side, context_dim)
            flops = count_flops(plain, x, t, context)
            seconds = time_forward(prepacked, x, t, context, args.repeats, args.warmup)
            achieved = flops / statistics.median(seconds)
            rows.append([f"{args.batch}x4x{side}x{side}", label, f"{flops / 1e9:.1f}",
                         f"{statistics.median(seconds):.3g} ({min(seconds):.3g}-{max(seconds):.3g})",
                         f"{achieved / 1e9:.0f}", f"{peak / 1e9:.0f}", f"{achieved / peak:.0%}"])
            shares = profile_classes(prepacked, x, t, context)
            profiles.append([f"{args.batch}x4x{side}x{side}", label] +
                            [", ".join(f"{k} {v:.0%}" for k, v in shares.items())])
            print(f"  measured {side}x{side} in {label}", flush=True)
            if args.against_diffusers:
                comparisons.append((f"{args.batch}x4x{side}x{side}", label,
                                    compare_profiles(prepacked, theirs, x, t, context)))
        del prepacked
    out = table(["latents", "ours in", "GFLOP per forward", "forward s (spread)", "achieved GFLOP/s",
                 f"torch.mm {args.gemm}^3 GFLOP/s", "achieved / peak"], rows)
    out += "\n\n" + table(["latents", "ours in", "self CPU time by operator class"], profiles)
    for latents, label, rows_here in comparisons:
        out += (f"\n\n{latents}, ours in {label} against diffusers fp32, self CPU seconds of one forward:\n" +
                table(["operator class", "ours s", "diffusers s", "ours / diffusers"], rows_here))
    params = sum(q.numel() for q in theirs.parameters()) / 1e6
    print(f"UNet forward ({params:.1f}M parameters, prepacked as loaded) against this CPU's matrix-product peak; "
          f"median of {args.repeats}; {machine()} ({threads} threads)")
    print(out)
    return out


if __name__ == "__main__":
    main()

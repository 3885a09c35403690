"""Benchmark 5: what a sampler step costs outside the UNet call, as a share of the step.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.sampler_overhead     # full-size SD 1.5 UNet, 4x64x64

For every registered sampler, ``sampling.sample`` runs ``--steps`` steps with classifier-free guidance
(``guidance.guided_eps_model``: the ``cat`` of the CFG pair, the ``chunk`` and Eq. 6 count as
overhead) around a model that returns a stored UNet output at once. That loop time, divided by the
steps, is the overhead per step: schedule look-ups, guidance, the update rule, noise, bookkeeping.
The share is ``overhead / (overhead + UNet calls per step x one UNet forward)``, with the UNet forward
timed on the same inputs (batch 2, the CFG pair). PNDM's pseudo Runge-Kutta warm-up calls the model
4 times per step; the calls are counted, not assumed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffusion_notes.guidance import guided_eps_model
from diffusion_notes.samplers import SAMPLERS
from diffusion_notes.sampling import sample
from diffusion_notes.schedules import NoiseSchedule

from .common import configure_threads, machine, run_ours, table, unet_inputs, unet_pair


def _sampler_names() -> list[str]:
    return list(SAMPLERS)  # a tuple of names, or a registry mapping names to samplers


def overhead_per_step(sampler: str, eps: torch.Tensor, x_T: torch.Tensor, context: torch.Tensor, steps: int,
                      repeats: int) -> tuple[float, float]:
    """(seconds per step outside the model, model calls per step), median of ``repeats`` runs."""
    calls = []

    def model(x, t, c):  # the UNet's place: hands back a stored output of the right shape
        calls.append(1)
        return eps

    half = context.shape[0] // 2
    eps_model = guided_eps_model(model, context[half:], context[:half], 7.5)
    schedule = NoiseSchedule.stable_diffusion()
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            calls.clear()
            start = time.perf_counter()
            sample(eps_model, x_T, schedule, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) / steps, len(calls) / steps


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--side", type=int, default=64, help="latent side (default 64: 512x512 images)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5, help="timed sampling runs per sampler")
    p.add_argument("--unet-repeats", type=int, default=3, help="timed UNet forwards")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    configure_threads(args.threads)

    unet, _, context_dim = unet_pair(args.size)
    x_in, t_in, context = unet_inputs(2, args.side, context_dim)
    unet_times = []
    with torch.inference_mode():
        for _ in range(args.unet_repeats + 1):
            start = time.perf_counter()
            eps_pair = run_ours(unet, x_in, t_in, context)
            unet_times.append(time.perf_counter() - start)
    unet_s = statistics.median(unet_times[1:])
    eps = eps_pair  # what the UNet returns for the CFG pair
    x_T = x_in[:1]

    rows = []
    for name in _sampler_names():
        overhead, calls = overhead_per_step(name, eps, x_T, context, args.steps, args.repeats)
        step = overhead + calls * unet_s
        rows.append([name, f"{overhead * 1e3:.3f}", f"{calls:.2f}", f"{step:.3g}", f"{100 * overhead / step:.4f}%"])
    out = table(["sampler", "overhead ms/step", "UNet calls/step", "step s", "overhead share"], rows)
    print(f"Sampler overhead, {args.steps} steps, CFG 7.5, latents 1x4x{args.side}x{args.side}; one UNet forward "
          f"(batch 2) {unet_s:.3g} s (median of {args.unet_repeats}); {machine()}")
    print(out)
    return out


if __name__ == "__main__":
    main()

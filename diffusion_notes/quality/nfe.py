r"""Counting model evaluations (NFE): the cost axis of every sampler comparison.

Papers compare samplers at equal *number of function evaluations* (DPM-Solver++ Fig. 1, UniPC
Tables, EDM Fig. 2), not at equal steps: Heun and DPM++ 2S evaluate the network twice per step, PNDM
four times in each of its three warm-up steps. Classifier-free guidance doubles the *batch* of each
evaluation (conditional and unconditional in one call, as CompVis does), not the count.

:func:`count_model_evaluations` does not restate any sampler's arithmetic: it runs the registered
loop itself on a stand-in network that predicts zero noise and counts the calls.
"""

from __future__ import annotations

import torch

from ..errors import SettingsError
from ..sampling import sample
from ..schedules import NoiseSchedule

__all__ = ["count_model_evaluations", "steps_for_nfe"]


def count_model_evaluations(sampler: str, steps: int, sigma_schedule: str = "default",
                            schedule: NoiseSchedule | None = None) -> int:
    """How many times ``sampler`` calls the network in ``steps`` steps on ``schedule`` (default: SD's, 1000 steps)."""
    calls = []

    def zero_noise(x, t):
        calls.append(float(t[0]))
        return torch.zeros_like(x)

    schedule = NoiseSchedule.stable_diffusion() if schedule is None else schedule
    x_T = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    sample(zero_noise, x_T, schedule, sampler=sampler, steps=steps, sigma_schedule=sigma_schedule,
           generator=torch.Generator().manual_seed(0))
    return len(calls)


def steps_for_nfe(sampler: str, nfe: int, sigma_schedule: str = "default", schedule: NoiseSchedule | None = None) -> int:
    """The most steps whose model evaluations do not exceed the budget ``nfe`` (step counts the sampler's
    grid refuses are skipped); SettingsError if no step count fits."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise SettingsError("nfe", f"nfe must be a positive integer, got {nfe!r}")
    best = None
    for steps in range(nfe, 0, -1):  # NFE >= steps, so no count above the budget can fit; the first fit from the top is the most
        try:
            if count_model_evaluations(sampler, steps, sigma_schedule, schedule) <= nfe:
                best = steps
                break
        except SettingsError:  # e.g. CompVis 'uniform' spacing cannot make 3 steps of 1000: try fewer
            continue
    if best is None:
        raise SettingsError("nfe", f"no number of steps of the {sampler} sampler fits in {nfe} model evaluations")
    return best

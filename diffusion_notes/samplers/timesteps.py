r"""Which timesteps a sampler visits, and the :math:`\bar\alpha` values it reads at each one.

A model trained with T = 1000 steps is sampled with S << T steps: the sampler visits a
subsequence :math:`\tau_1 < \dots < \tau_S` of 0..T-1 (DDIM Sec. 4.2). Codebases choose the
subsequence differently, and the choice changes the pictures:

================  =====================================================  ===========================
spacing           timesteps (ascending)                                   used by
================  =====================================================  ===========================
``"uniform"``     ``range(0, T, T // S) + 1``                             CompVis ``make_ddim_timesteps``
``"quad"``        ``int(linspace(0, sqrt(0.8 T), S) ** 2) + 1``           CompVis (``ddim_discretize="quad"``)
``"leading"``     ``arange(S) * (T // S) + steps_offset``                 diffusers; SD configs set steps_offset=1
``"trailing"``    ``round(arange(T, 0, -T / S))[:S] - 1``                 diffusers (Lin et al. 2023, Table 2)
``"linspace"``    ``round(linspace(0, T - 1, S))``                        diffusers
================  =====================================================  ===========================

CompVis's ``uniform`` can give more than S steps (``range`` keeps the remainder: S = 7 gives 8),
and for some S it asks for timestep T, one past the end (with T = 1000: S = 3, 9, 27, 36, 37, 101-111,
251-333 and every S > 500):
CompVis then fails with an IndexError deep inside the sampler. Here that case is a ValueError
that names the step counts and spacings which work.

CompVis's ``quad`` repeats timesteps at the start (S = 50 gives ``[1 1 2 3 6 ...]``): two steps
from the same noise level. Here every spacing is strictly ascending; ``quad`` keeps S steps by moving
each repeat up to one past its predecessor (``[1 2 3 4 6 ...]``), the smallest change that removes it
(:func:`strictly_ascending`). Where that would pass T - 1, the step count is refused.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = ["SPACINGS", "make_timesteps", "ddim_sampling_parameters", "strictly_ascending"]

SPACINGS = ("uniform", "quad", "leading", "trailing", "linspace")


def _uniform(num_steps: int, T: int) -> np.ndarray:
    c = T // num_steps
    return np.asarray(list(range(0, T, c))) + 1


def strictly_ascending(timesteps: np.ndarray) -> np.ndarray:
    """Move every repeated (or smaller) timestep up to one past its predecessor: ``[1 1 2 3 6]`` -> ``[1 2 3 4 6]``."""
    out = np.array(timesteps, dtype=np.int64)
    for k in range(1, len(out)):
        out[k] = max(out[k], out[k - 1] + 1)
    return out


def make_timesteps(num_steps: int, num_train_timesteps: int = 1000, spacing: str = "uniform", steps_offset: int = 0) -> np.ndarray:
    """The visited timesteps in ascending order, as an int64 array (CompVis ``ddim_timesteps``).

    ``steps_offset`` applies to ``"leading"`` only, as in diffusers (SD's configs use 1, which
    makes ``leading`` equal CompVis's ``uniform`` whenever S divides T).
    CompVis: ``make_ddim_timesteps``; diffusers: ``scheduler.set_timesteps(S)`` then ``timesteps[::-1]``.
    """
    T, S = num_train_timesteps, num_steps
    if not isinstance(S, (int, np.integer)) or not 1 <= S <= T:
        raise ValueError(f"the number of sampling steps must be an integer from 1 to {T} (the schedule's length), got {S!r}")
    if spacing == "uniform":
        timesteps = _uniform(S, T)
    elif spacing == "quad":
        timesteps = strictly_ascending(((np.linspace(0, np.sqrt(T * 0.8), S)) ** 2).astype(int) + 1)
    elif spacing == "leading":
        timesteps = (np.arange(0, S) * (T // S)).round() + steps_offset
    elif spacing == "trailing":
        # diffusers' expression; [:S] drops the extra element that float round-off adds for 62 step
        # counts (S = 61, 103, ...), which diffusers turns into timestep -1 (silently alphas_cumprod[-1]).
        timesteps = np.round(np.arange(T, 0, -T / S))[:S][::-1] - 1
    elif spacing == "linspace":
        timesteps = np.linspace(0, T - 1, S).round()
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {SPACINGS}")
    timesteps = timesteps.astype(np.int64)
    if timesteps.max() >= T or timesteps.min() < 0:
        raise ValueError(_out_of_range_message(S, T, spacing, steps_offset, int(timesteps.max())))
    return timesteps


@functools.lru_cache(maxsize=8)
def _uniform_step_counts_that_fit(T: int) -> tuple[int, ...]:
    # counts that stay inside the schedule and also give exactly s steps (range() keeps no remainder)
    return tuple(s for s in range(1, T + 1) if _uniform(s, T).max() < T and len(_uniform(s, T)) == s)


def _out_of_range_message(S: int, T: int, spacing: str, steps_offset: int, t_max: int) -> str:
    if spacing == "uniform":
        nearest = min(_uniform_step_counts_that_fit(T), key=lambda s: abs(s - S))
        return (
            f"CompVis 'uniform' spacing with {S} steps would visit timestep {t_max} (range(0, {T}, {T // S}) + 1), "
            f"past the end of the {T}-step schedule (CompVis fails here with an IndexError); use {nearest} steps, "
            f"or spacing='leading', 'trailing' or 'linspace'"
        )
    return f"{spacing!r} spacing with {S} steps and steps_offset={steps_offset} would visit timestep {t_max}, past the end of the {T}-step schedule; lower steps_offset or the step count"


def ddim_sampling_parameters(alphas_cumprod: torch.Tensor, ddim_timesteps, eta: float = 0.0, set_alpha_to_one: bool = False):
    r"""The per-step :math:`a_t`, :math:`a_{prev}` and :math:`\sigma_t` of a sampler, as float64 tensors of length S.

    ``ddim_alphas[i] = alphas_cumprod[tau_i]``, ``ddim_alphas_prev[i] = alphas_cumprod[tau_{i-1}]``; for
    the last step (i = 0) the "previous" alpha is ``alphas_cumprod[0]`` in CompVis, or 1 with
    ``set_alpha_to_one=True`` (diffusers' default, and DDPM's :math:`\bar\alpha_0 = 1`): the final
    sample then carries no noise at all instead of the tiny :math:`\sqrt{1-\bar\alpha_0} \approx 0.03` of SD.
    ``ddim_sigmas`` is DDIM Eq. 16 with ``eta``.

    CompVis: ``make_ddim_sampling_parameters`` (returns ``sigmas, alphas, alphas_prev``);
    diffusers: ``alphas_cumprod[t]`` and ``final_alpha_cumprod`` inside ``DDIMScheduler.step``.
    """
    from .ddim import ddim_sigma  # imported here: ddim.py is the formula's home, this only tabulates it

    alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    ddim_timesteps = torch.as_tensor(np.asarray(ddim_timesteps), dtype=torch.long)
    ddim_alphas = alphas_cumprod[ddim_timesteps]
    first = alphas_cumprod.new_ones(1) if set_alpha_to_one else alphas_cumprod[:1]
    ddim_alphas_prev = torch.cat([first, ddim_alphas[:-1]])
    ddim_sigmas = ddim_sigma(ddim_alphas, ddim_alphas_prev, eta)
    return ddim_alphas, ddim_alphas_prev, ddim_sigmas

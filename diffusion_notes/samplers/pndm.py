r"""PNDM's pseudo Runge-Kutta warm-up (Liu et al. 2022, Eq. 13, "F-PNDM" with PRK start).

The full PNDM method starts the linear multi-step (PLMS) sampler with three steps of a pseudo
4th-order Runge-Kutta method instead of PLMS's single improved-Euler step. Each step evaluates the
model four times; the "transfer" between noise levels is always the DDIM (eta = 0) step
:math:`\phi(x, e, t \to t')` (PNDM Eq. 9, which is DDIM Eq. 12 with :math:`\sigma = 0`):

.. math::
    e_1 = e_\theta(x_t, t),\quad x_1 = \phi(x_t, e_1, t \to t - \tfrac{\delta}{2})\\
    e_2 = e_\theta(x_1, t - \tfrac{\delta}{2}),\quad x_2 = \phi(x_t, e_2, t \to t - \tfrac{\delta}{2})\\
    e_3 = e_\theta(x_2, t - \tfrac{\delta}{2}),\quad x_3 = \phi(x_t, e_3, t \to t - \delta)\\
    e_4 = e_\theta(x_3, t - \delta),\quad e' = \tfrac16(e_1 + 2e_2 + 2e_3 + e_4),\quad x_{t-\delta} = \phi(x_t, e', t \to t-\delta)

Only :math:`e_1` joins the history that the following PLMS steps combine.
"""

from __future__ import annotations

from typing import Callable

import torch

from .ddim import ddim_step
from .plms import plms_steps
from .registry import Step, register

__all__ = ["prk_step", "PRK_WARMUP_STEPS", "sample_pndm"]

#: PNDM warms up with three Runge-Kutta steps so that the first linear multi-step has 3 old e_t.
PRK_WARMUP_STEPS = 3


def prk_step(
    eps_fn: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    t: int,
    t_mid: int,
    t_prev: int,
    a_t,
    a_mid,
    a_prev,
):
    r"""One pseudo Runge-Kutta step (PNDM Eq. 13); returns ``(x_prev, pred_x0, e_1)``.

    ``t_mid`` is the integer timestep halfway to ``t_prev`` (diffusers: ``t - (T // S) // 2``) and
    ``a_mid`` its :math:`\bar\alpha`. diffusers: ``PNDMScheduler.step_prk`` (four calls, counter-driven).
    """
    e_1 = eps_fn(x, t)
    x_1, _ = ddim_step(x, e_1, a_t, a_mid)
    e_2 = eps_fn(x_1, t_mid)
    x_2, _ = ddim_step(x, e_2, a_t, a_mid)
    e_3 = eps_fn(x_2, t_mid)
    x_3, _ = ddim_step(x, e_3, a_t, a_prev)
    e_4 = eps_fn(x_3, t_prev)
    e_prime = (e_1 + 2 * e_2 + 2 * e_3 + e_4) / 6
    x_prev, pred_x0 = ddim_step(x, e_prime, a_t, a_prev)
    return x_prev, pred_x0, e_1


@register("pndm", "PNDM", "PNDM: 3 pseudo Runge-Kutta warm-up steps (4 model calls each), then PLMS")
def sample_pndm(model, x, grid, noise):
    """:func:`prk_step` for the first ``min(3, N)`` steps, then PLMS with their ``e_1`` as history.

    The midpoint is the integer timestep ``t - (t - t_prev) // 2``; at the very last step there is no
    next timestep to evaluate at and 0 is used (docs/conventions.md). diffusers: ``PNDMScheduler(skip_prk_steps=False)``."""
    old_eps = []
    warmup = min(PRK_WARMUP_STEPS, grid.num_steps)
    for i in range(warmup):
        t, a_t, a_prev = float(grid.timesteps[i]), float(grid.alphas_cumprod[i]), float(grid.alphas_cumprod[i + 1])
        t_prev = int(grid.timesteps[i + 1]) if i + 1 < grid.num_steps else 0
        t_mid = int(t) - (int(t) - t_prev) // 2
        x, pred_x0, e_1 = prk_step(model, x, t, t_mid, t_prev, a_t, grid.alpha_at(t_mid), a_prev)
        old_eps.append(e_1)
        yield Step(i, t, float(grid.sigmas[i]), x, pred_x0)
    yield from plms_steps(model, x, grid, start=warmup, old_eps=old_eps)

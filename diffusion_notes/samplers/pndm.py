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

__all__ = ["prk_step", "PRK_WARMUP_STEPS"]

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

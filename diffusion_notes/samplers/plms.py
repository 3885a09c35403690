r"""PLMS, the pseudo linear multi-step sampler of PNDM (Liu et al. 2022), exactly as CompVis runs it.

Every step is a DDIM (eta = 0) step taken with a *combined* noise estimate :math:`e_t'` instead of
:math:`e_t`. The combination is the Adams-Bashforth rule (PNDM Eq. 12) applied to the history of
raw model outputs ``old_eps`` (newest last):

=========================  =================================================================
history                    :math:`e_t'`
=========================  =================================================================
none (first step)          pseudo improved Euler: :math:`(e_t + e_\theta(x_{prev}, t_{next}))/2`,
                           where :math:`x_{prev}` is a DDIM step taken with :math:`e_t` (2 model calls)
1 old                      :math:`(3e_t - e_{-1})/2`
2 old                      :math:`(23e_t - 16e_{-1} + 5e_{-2})/12`
3 or more old              :math:`(55e_t - 59e_{-1} + 37e_{-2} - 9e_{-3})/24`
=========================  =================================================================

The history stores the raw :math:`e_t` of each step, never the combined one.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .ddim import ddim_step
from .registry import Step, register

__all__ = ["ADAMS_BASHFORTH", "adams_bashforth", "plms_step", "sample_plms"]

#: Adams-Bashforth coefficients, newest first, and their common denominator (PNDM Eq. 12).
#: notebooks/05 derives them by integrating the interpolating polynomial.
ADAMS_BASHFORTH = {
    2: ((3, -1), 2),
    3: ((23, -16, 5), 12),
    4: ((55, -59, 37, -9), 24),
}


def adams_bashforth(e_t: torch.Tensor, old_eps: Sequence[torch.Tensor]) -> torch.Tensor:
    """The combined :math:`e_t'` from ``e_t`` and 1, 2 or 3+ previous raw outputs (newest last).

    CompVis: the ``len(old_eps) == ...`` branches of ``PLMSSampler.p_sample_plms``;
    diffusers: ``PNDMScheduler.step_plms``."""
    if not old_eps:
        raise ValueError("Adams-Bashforth needs at least one previous e_t; the first PLMS step uses plms_step's improved Euler")
    order = min(len(old_eps) + 1, 4)
    coefficients, denominator = ADAMS_BASHFORTH[order]
    history = [e_t, *reversed(old_eps[-(order - 1):])]
    return sum(c * e for c, e in zip(coefficients, history)) / denominator


def plms_step(
    eps_fn: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    t: int,
    t_next: int,
    a_t,
    a_prev,
    old_eps: Sequence[torch.Tensor],
):
    r"""One PLMS step; returns ``(x_prev, pred_x0, e_t)`` where ``e_t`` is the raw output to append to ``old_eps``.

    ``eps_fn(x, t)`` is the (guided) noise prediction at an integer timestep; it is called twice on
    the first step (at ``t`` and at ``t_next``, the next visited timestep) and once afterwards.
    CompVis: ``PLMSSampler.p_sample_plms``; diffusers: ``PNDMScheduler(skip_prk_steps=True).step``.
    """
    e_t = eps_fn(x, t)
    if len(old_eps) == 0:
        x_prev, _ = ddim_step(x, e_t, a_t, a_prev)
        e_t_next = eps_fn(x_prev, t_next)
        e_t_prime = (e_t + e_t_next) / 2
    else:
        e_t_prime = adams_bashforth(e_t, old_eps)
    x_prev, pred_x0 = ddim_step(x, e_t_prime, a_t, a_prev)
    return x_prev, pred_x0, e_t


@register("plms", "PLMS", "CompVis PLMS: pseudo improved Euler, then Adams-Bashforth of order 2-4 on e_t (PNDM Eq. 12)")
def sample_plms(model, x, grid, noise):
    """PLMS over the grid. CompVis: ``PLMSSampler.plms_sampling``; diffusers: ``PNDMScheduler(skip_prk_steps=True)``."""
    yield from plms_steps(model, x, grid, start=0, old_eps=[])


def plms_steps(model, x, grid, start: int, old_eps):
    """PLMS steps ``start..N-1`` continuing the history ``old_eps`` (PNDM hands over its warm-up's).

    Keeps the last three raw ``e_t``. The first step (empty history) evaluates the model again at the
    next level, at the same level when it is also the last step (CompVis's ``time_range[min(i + 1, total_steps - 1)]``)."""
    old_eps = list(old_eps)
    for i in range(start, grid.num_steps):
        t, a_t, a_prev = float(grid.timesteps[i]), float(grid.alphas_cumprod[i]), float(grid.alphas_cumprod[i + 1])
        t_next = float(grid.timesteps[min(i + 1, grid.num_steps - 1)])
        x, pred_x0, e_t = plms_step(model, x, t, t_next, a_t, a_prev, old_eps)
        old_eps = [*old_eps, e_t][-3:]  # Adams-Bashforth of order 4 needs only the last three
        yield Step(i, t, float(grid.sigmas[i]), x, pred_x0)

r"""DDIM inversion and interpolation of noises (Song, Meng & Ermon 2021, Sec. 4.3 and 5.4).

Deterministic DDIM (:math:`\eta = 0`) is a discretisation of the probability-flow ODE, and an ODE can
be integrated in either direction. DDIM Eq. 12 with :math:`\eta = 0`,

.. math::
    x_{next} = \sqrt{a_{next}}\;\underbrace{\frac{x_t - \sqrt{1-a_t}\,e_t}{\sqrt{a_t}}}_{\text{pred\_x0}}
             + \sqrt{1-a_{next}}\;e_t,

is the same update whether :math:`a_{next}` belongs to a less noisy level (sampling) or to a noisier
one (inversion, "encoding" in Song et al. 2021 Sec. 5.4): :func:`ddim_invert` walks the sampler's own
grid backwards, from :math:`x_0` to :math:`x_T`, with :func:`~diffusion_notes.samplers.ddim.ddim_step`.
Sampling with DDIM from that :math:`x_T` on the same grid gives :math:`x_0` back up to the
discretisation error of the two first-order solvers, which vanishes as the steps grow
(``notebooks/17_ddim_inversion.ipynb`` measures it).

The one choice an inversion makes is where to evaluate :math:`e_t` in a step from level
:math:`t` up to :math:`t_{next}`: here, as in diffusers' ``DDIMInverseScheduler`` and null-text
inversion's ``next_step`` (Mokady et al. 2023), at the current :math:`x_t` and the *target* timestep
:math:`t_{next}`; the first step then never evaluates the model at the clean end point
(:math:`\sigma = 0`), where :math:`\epsilon` is undefined. Sampling back reads the network at the
same timesteps, so the reconstruction error comes only from :math:`x` moving during a step.

:func:`slerp`: spherical interpolation (Shoemake 1985), the interpolation of Gaussian noises that
keeps their norm, which DDIM Sec. 5.4 uses between two :math:`x_T`.
"""

from __future__ import annotations

from typing import Callable

import torch

from .errors import SettingsError
from .samplers import SamplingGrid
from .samplers.ddim import ddim_step
from .sampling import PREDICTION_TYPES, SamplerSettings, Trajectory, _model_function
from .schedules import NoiseSchedule

__all__ = ["ddim_invert", "slerp", "lerp"]


def ddim_invert(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_0: torch.Tensor,
    schedule: NoiseSchedule | SamplingGrid,
    steps: int = 50,
    *,
    prediction_type: str = "eps",
    return_trajectory: bool = False,
):
    r"""Run deterministic DDIM from ``x_0`` up to the grid's first level; returns ``x_T`` (or ``(x_T, Trajectory)``).

    ``schedule``: the :class:`~diffusion_notes.schedules.NoiseSchedule` (then the grid is DDIM's default
    grid of ``steps`` steps, the one ``sample(..., "ddim", steps)`` walks) or the
    :class:`~diffusion_notes.samplers.SamplingGrid` to walk backwards (e.g.
    ``SamplerSettings("ddim", 10, spacing="trailing").grid(schedule)``). ``eps_model(x, t)`` as for
    :func:`~diffusion_notes.sampling.sample` (wrap it with guidance if you want the guided ODE, which is
    then inverted with the same guided :math:`e_t`). Step from level ``j + 1`` to level ``j``:
    :math:`e_t = \epsilon_\theta(x, t_j)`, then DDIM Eq. 12 (:math:`\eta = 0`) with
    :math:`a_t = \bar\alpha_{j+1}`, :math:`a_{next} = \bar\alpha_j`.

    diffusers: ``DDIMInverseScheduler`` (``initial_alpha_cumprod`` is the grid's end point); the
    trajectory lists the levels visited, from ``x_0`` to ``x_T``."""
    if prediction_type not in PREDICTION_TYPES:
        raise SettingsError("prediction_type", f"prediction_type must be one of {PREDICTION_TYPES}, not {prediction_type!r}")
    grid = schedule if isinstance(schedule, SamplingGrid) else SamplerSettings("ddim", steps).grid(schedule)
    progress = {"step": 0}
    model = _model_function(eps_model, x_0, grid, prediction_type, False, progress)
    trajectory = Trajectory(x=[x_0]) if return_trajectory else None
    x = x_0
    for j in reversed(range(grid.num_steps)):  # level j + 1 (less noisy) -> level j (noisier)
        t_next = float(grid.timesteps[j])
        a_t, a_next = float(grid.alphas_cumprod[j + 1]), float(grid.alphas_cumprod[j])
        x, pred_x0 = ddim_step(x, model(x, t_next), a_t, a_next)
        if trajectory is not None:
            trajectory.timesteps.append(t_next)
            trajectory.x.append(x)
            trajectory.pred_x0.append(pred_x0)
        progress["step"] += 1
    return (x, trajectory) if return_trajectory else x


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product over all but the batch dimension, shaped to broadcast against ``a``."""
    return (a * b).flatten(1).sum(1).reshape(-1, *([1] * (a.dim() - 1)))


def slerp(v0: torch.Tensor, v1: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""Spherical linear interpolation, per sample (batch first):

    .. math::
        \mathrm{slerp}(v_0, v_1; \alpha) = \frac{\sin((1-\alpha)\theta)}{\sin\theta}v_0 + \frac{\sin(\alpha\theta)}{\sin\theta}v_1,
        \qquad \cos\theta = \frac{\langle v_0, v_1\rangle}{\|v_0\|\,\|v_1\|}

    (Shoemake 1985; DDIM Sec. 5.4 interpolates :math:`x_T` so). For two vectors of equal norm the result
    keeps that norm, where :func:`lerp` shrinks it by :math:`\sqrt{(1-\alpha)^2 + \alpha^2 + 2\alpha(1-\alpha)\cos\theta}`,
    :math:`1/\sqrt 2` at :math:`\alpha = 1/2` for two independent high-dimensional Gaussians (:math:`\cos\theta \approx 0`).
    Nearly parallel vectors (:math:`\sin\theta < 10^{-7}`) fall back to :func:`lerp`."""
    cos_theta = (_dot(v0, v1) / (_dot(v0, v0) * _dot(v1, v1)).sqrt()).clamp(-1.0, 1.0)
    theta = torch.arccos(cos_theta)
    sin_theta = torch.sin(theta)
    parallel = sin_theta < 1e-7
    safe = torch.where(parallel, torch.ones_like(sin_theta), sin_theta)
    w0 = torch.where(parallel, torch.full_like(theta, 1 - alpha), torch.sin((1 - alpha) * theta) / safe)
    w1 = torch.where(parallel, torch.full_like(theta, alpha), torch.sin(alpha * theta) / safe)
    return w0 * v0 + w1 * v1


def lerp(v0: torch.Tensor, v1: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""Linear interpolation :math:`(1-\alpha)v_0 + \alpha v_1` (what not to do with Gaussian noises: see :func:`slerp`)."""
    return (1 - alpha) * v0 + alpha * v1

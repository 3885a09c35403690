r"""Sampling a flow-matching model: integrate :math:`dx/dt = v_\theta(x, t)` from :math:`t = 1` (noise) to 0 (data).

The probability-flow ODE of a flow-matching model is its velocity field itself (Lipman et al. 2023, Eq. 1;
Esser et al. 2024, Sec. 2), so a sampler is an ODE solver on a grid of levels
:math:`1 = \sigma_0 > \sigma_1 > \dots > \sigma_N = 0` (SD3 and diffusers call the levels ``sigmas``; the network is
fed the timestep :math:`1000\,\sigma`):

* :func:`flow_sigmas`: the grid of SD3 and diffusers' ``FlowMatchEulerDiscreteScheduler`` (uniform in
  :math:`\sigma` before :func:`~diffusion_notes.flow_matching.shift_sigmas`);
* :func:`flow_euler_step`: :math:`x_{i+1} = x_i + (\sigma_{i+1} - \sigma_i)\,v_\theta(x_i, \sigma_i)`, Euler's method;
* :func:`sample_flow_heun`: Heun's method (Karras et al. 2022, Alg. 1 applied to the velocity), with an Euler last step
  onto :math:`\sigma = 0`, as diffusers' ``FlowMatchHeunDiscreteScheduler`` and k-diffusion's ``sample_heun`` do.

``model(x, t)`` is the velocity :math:`v_\theta(x, t)` at the timestep :math:`t = 1000\,\sigma` (a Python float), already
guided. Each loop yields one :class:`~diffusion_notes.samplers.registry.Step` per grid step, like the other samplers
(``pred_x0`` is :math:`x - \sigma v`), so the step viewer and callbacks work the same.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from .flow_matching import shift_sigmas, x0_from_velocity
from .samplers.registry import Step

__all__ = ["NUM_TRAIN_TIMESTEPS", "flow_sigmas", "flow_euler_step", "sample_flow_euler", "sample_flow_heun",
           "FLOW_SAMPLERS", "model_evaluations", "sample_flow"]

#: SD3's and diffusers' default: the network sees the timestep 1000 σ.
NUM_TRAIN_TIMESTEPS = 1000


def flow_sigmas(steps: int, shift: float = 1.0, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    r"""The ``steps + 1`` levels :math:`\sigma_0 = 1 > \dots > \sigma_{N-1} > \sigma_N = 0` of SD3 / diffusers
    (``FlowMatchEulerDiscreteScheduler.set_timesteps``), float64.

    The training levels are :math:`k/T`, :math:`k = T..1`, shifted; the sampling grid runs uniformly from the largest
    shifted level (1) to the smallest, :math:`\operatorname{shift}(1/T)`, and is then shifted *again*, so the last
    level before 0 is :math:`\operatorname{shift}(\operatorname{shift}(1/T))`: a quirk of SD3's reference code
    (``ModelSamplingDiscreteFlow``) that diffusers reproduces, kept here so the grids agree."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    sigma_max, sigma_min = 1.0, float(shift_sigmas(torch.tensor(1.0 / num_train_timesteps, dtype=torch.float64), shift))
    uniform = torch.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, steps,
                             dtype=torch.float64) / num_train_timesteps
    return torch.cat([shift_sigmas(uniform, shift), uniform.new_zeros(1)])


def flow_euler_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One Euler step of :math:`dx/d\sigma = v`: :math:`x_{next} = x + (\sigma_{next} - \sigma)\,v`; returns
    ``(x_next, pred_x0)`` with :math:`\hat x_0 = x - \sigma v` (diffusers ``FlowMatchEulerDiscreteScheduler.step``)."""
    return x + (sigma_next - sigma) * v, x0_from_velocity(x, v, sigma)


def sample_flow_euler(model: Callable, x: torch.Tensor, sigmas: torch.Tensor,
                      num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Iterator[Step]:
    """Euler's method over the grid ``sigmas`` (:func:`flow_euler_step` at every level): one model call per step."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        t = sigma * num_train_timesteps
        x, pred_x0 = flow_euler_step(x, model(x, t), sigma, sigma_next)
        yield Step(i, t, sigma, x, pred_x0)


def sample_flow_heun(model: Callable, x: torch.Tensor, sigmas: torch.Tensor,
                     num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Iterator[Step]:
    r"""Heun's method (the explicit trapezoidal rule) over ``sigmas``: an Euler predictor
    :math:`\tilde x = x + h\,v(x, \sigma_i)`, then :math:`x_{i+1} = x + \tfrac h2\,(v(x, \sigma_i) + v(\tilde x, \sigma_{i+1}))`,
    :math:`h = \sigma_{i+1} - \sigma_i`. The step onto :math:`\sigma = 0` stays Euler (two model calls per step
    otherwise): diffusers ``FlowMatchHeunDiscreteScheduler``, Karras et al. 2022 Alg. 1."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        t = sigma * num_train_timesteps
        v = model(x, t)
        x_euler, pred_x0 = flow_euler_step(x, v, sigma, sigma_next)
        if sigma_next > 0:
            v_next = model(x_euler, sigma_next * num_train_timesteps)
            x = x + (sigma_next - sigma) * (v + v_next) / 2
        else:
            x = x_euler
        yield Step(i, t, sigma, x, pred_x0)


#: name -> loop function, ``fn(model, x, sigmas) -> Iterator[Step]``.
FLOW_SAMPLERS = {"flow_euler": sample_flow_euler, "flow_heun": sample_flow_heun}


def model_evaluations(sampler: str, steps: int) -> int:
    """How many velocity evaluations ``sampler`` makes over ``steps`` steps ending at σ = 0 (guidance doubles the
    batch, not this count)."""
    return steps if sampler == "flow_euler" else 2 * steps - 1


def sample_flow(model: Callable, x_1: torch.Tensor, steps: int, sampler: str = "flow_euler", shift: float = 1.0,
                sigmas: torch.Tensor | None = None, callback: Callable[[Step], None] | None = None) -> torch.Tensor:
    r"""Generate from a flow-matching model: start at :math:`x_1 \sim \mathcal N(0, I)` (``x_1``), run ``sampler`` over
    :func:`flow_sigmas` ``(steps, shift)`` (or the ``sigmas`` given), return :math:`x_0`. ``callback(step)`` sees every step."""
    if sampler not in FLOW_SAMPLERS:
        raise ValueError(f"unknown flow sampler {sampler!r}; choose one of {sorted(FLOW_SAMPLERS)}")
    grid = flow_sigmas(steps, shift) if sigmas is None else sigmas
    x = x_1
    for step in FLOW_SAMPLERS[sampler](model, x_1, grid):
        x = step.x
        if callback is not None:
            callback(step)
    return x

r"""Multistep consistency sampling (Song et al. 2023, Alg. 1) with the Latent Consistency Model's
parameterisation (Luo et al. 2023, Eq. 9): the sampler of LCM and LCM-LoRA checkpoints.

A consistency model maps any point of a probability-flow ODE trajectory to the trajectory's origin,

.. math::
    f_\theta(x_t, t) = c_{skip}(t)\,x_t + c_{out}(t)\,\hat x_0(x_t, t),\qquad
    \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon_\theta(x_t, t)}{\sqrt{\bar\alpha_t}},

with :math:`c_{skip} = \sigma_{data}^2 / ((\kappa t)^2 + \sigma_{data}^2)` and
:math:`c_{out} = \kappa t / \sqrt{(\kappa t)^2 + \sigma_{data}^2}` (:math:`\sigma_{data} = 0.5`, the
timestep scaled by :math:`\kappa` = ``timestep_scaling`` = 10): :math:`c_{skip}(0) = 1`, :math:`c_{out}(0) = 0`,
the boundary condition :math:`f(x, 0) = x` (Song et al. 2023, Eq. 3). Multistep sampling alternates
one jump to :math:`\hat x_0` with re-noising to the next, lower level by fresh noise:

.. math::
    x_{prev} = \sqrt{a_{prev}}\,f_\theta(x_t, t) + \sqrt{1 - a_{prev}}\,z,\qquad z \sim \mathcal N(0, I),

and the last step returns :math:`f_\theta` itself. Each step forgets the previous path except through
:math:`\hat x_0`, so the sampler is stochastic. On a model that was not distilled (an ordinary ε-model)
the same loop runs, but each jump to :math:`\hat x_0` is then only the blurry posterior mean.

Its default grid is ``trailing`` (the first level is timestep T - 1, pure noise), ending at :math:`\bar\alpha = 1`.
diffusers' LCM visits a subset of a 50-step grid instead: :func:`lcm_timesteps` gives it, for
``SamplerSettings("lcm", steps).grid(schedule, timesteps=lcm_timesteps(steps))``.
"""

from __future__ import annotations

import numpy as np

from .registry import Step, register

__all__ = ["lcm_scalings", "consistency_function", "lcm_step", "lcm_timesteps", "sample_lcm", "SIGMA_DATA"]

#: :math:`\sigma_{data}` of the boundary-condition scalings (Song et al. 2023, App. C; LCM keeps 0.5).
SIGMA_DATA = 0.5


def lcm_scalings(t, timestep_scaling: float = 10.0, sigma_data: float = SIGMA_DATA):
    r"""LCM's :math:`(c_{skip}, c_{out})` at timestep ``t``: :math:`c_{skip} = \sigma_{data}^2/((\kappa t)^2+\sigma_{data}^2)`,
    :math:`c_{out} = \kappa t/\sqrt{(\kappa t)^2+\sigma_{data}^2}`, :math:`\kappa` = ``timestep_scaling``.

    Luo et al. 2023, Eq. 9 (Song et al. 2023, Eq. 3 with :math:`\epsilon = 0`);
    diffusers: ``LCMScheduler.get_scalings_for_boundary_condition_discrete``."""
    scaled = t * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def consistency_function(x, e_t, a_t, t, timestep_scaling: float = 10.0):
    r""":math:`f_\theta(x_t, t) = c_{skip}(t)\,x_t + c_{out}(t)\,\hat x_0`; returns ``(denoised, pred_x0)``.

    Luo et al. 2023, Eq. 9; diffusers: ``denoised = c_out * predicted_original_sample + c_skip * sample``."""
    pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
    c_skip, c_out = lcm_scalings(t, timestep_scaling)
    return c_skip * x + c_out * pred_x0, pred_x0


def lcm_step(x, e_t, a_t, t, a_prev, noise, timestep_scaling: float = 10.0):
    r"""One step of multistep consistency sampling that is not the last: :math:`f_\theta(x_t, t)` re-noised to
    :math:`\bar\alpha_{prev}` with fresh noise ``noise``, :math:`x_{prev} = \sqrt{a_{prev}}\,f_\theta + \sqrt{1-a_{prev}}\,z`;
    returns ``(x_prev, denoised)``.

    Song et al. 2023, Alg. 1; diffusers: ``LCMScheduler.step`` (``prev_sample``, ``denoised``)."""
    denoised, _ = consistency_function(x, e_t, a_t, t, timestep_scaling)
    return a_prev**0.5 * denoised + (1 - a_prev) ** 0.5 * noise, denoised


def lcm_timesteps(steps: int, original_inference_steps: int = 50, num_train_timesteps: int = 1000) -> np.ndarray:
    r"""diffusers' LCM timesteps, ascending: ``steps`` evenly chosen (floor of a linspace) among the
    distillation grid :math:`t = k\,j - 1`, :math:`j = 1..N`, :math:`k = T // N`, N = ``original_inference_steps``.

    diffusers: ``LCMScheduler.set_timesteps(steps)`` (``lcm_origin_timesteps``, ``inference_indices``)."""
    if not 1 <= steps <= original_inference_steps:
        raise ValueError(f"LCM takes 1 to original_inference_steps = {original_inference_steps} steps, not {steps}")
    k = num_train_timesteps // original_inference_steps
    origin = (np.arange(1, original_inference_steps + 1) * k - 1)[::-1]
    indices = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
    return origin[indices][::-1].copy()


@register("lcm", "LCM", "multistep consistency sampling (Song et al. 2023 Alg. 1) with LCM's c_skip, c_out: "
          "jump to x0, re-noise with fresh noise", options={"timestep_scaling": 10.0}, stochastic=True,
          grid_defaults={"spacing": "trailing", "steps_offset": 0, "set_alpha_to_one": True})
def sample_lcm(model, x, grid, noise, timestep_scaling: float = 10.0):
    r"""Consistency steps over the grid: :func:`consistency_function` at level i, then re-noised to level i + 1
    with fresh noise; the last step returns :math:`f_\theta` (no noise).

    Song et al. 2023, Alg. 1; diffusers: ``LCMScheduler``."""
    for i in range(grid.num_steps):
        t, a_t, a_prev = float(grid.timesteps[i]), float(grid.alphas_cumprod[i]), float(grid.alphas_cumprod[i + 1])
        e_t = model(x, t)
        if i + 1 < grid.num_steps:
            x, denoised = lcm_step(x, e_t, a_t, t, a_prev, noise(), timestep_scaling)
        else:
            x = denoised = consistency_function(x, e_t, a_t, t, timestep_scaling)[0]
        yield Step(i, t, float(grid.sigmas[i]), x, denoised)  # the step's x0 estimate: f, not x0_hat

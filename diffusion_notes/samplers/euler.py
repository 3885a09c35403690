r"""Karras et al. 2022's first- and second-order ODE steps in σ, and the ancestral Euler step.

All three walk the grid's noise levels :math:`\sigma_0 > \dots > \sigma_N` (usually :math:`\sigma_N = 0`) on
:math:`\bar x = x_t/\sqrt{\bar\alpha}` (see :mod:`~diffusion_notes.samplers.sigma`), with the slope
:math:`d_i = (\bar x_i - D(\bar x_i;\sigma_i))/\sigma_i`:

* Euler (Karras Alg. 1 / Alg. 2 without churn): :math:`\bar x_{i+1} = \bar x_i + (\sigma_{i+1} - \sigma_i)\,d_i`;
  with an ε-model this is exactly DDIM (:math:`\eta = 0`) written in σ;
* Heun (Karras Alg. 1): the Euler step, then the trapezoid with the slope at its end point
  (two model evaluations per step, one on the last step to :math:`\sigma = 0`);
* Euler ancestral: Euler down to :math:`\sigma_{down}`, then fresh noise :math:`\sigma_{up} z` back up to
  :math:`\sigma_{i+1}` (:func:`~diffusion_notes.samplers.sigma.ancestral_step`).
"""

from __future__ import annotations

from .registry import SIGMA_GRID, Step, register
from .sigma import ancestral_step, denoise, to_d, x_bar, x_vp

__all__ = ["euler_step", "euler_ancestral_step", "heun_step", "sample_euler", "sample_euler_ancestral", "sample_heun"]


def euler_step(x_bar_, d, sigma: float, sigma_next: float):
    r"""Karras Alg. 2 (churn 0), line 8: :math:`\bar x_{i+1} = \bar x_i + (\sigma_{i+1} - \sigma_i)\,d_i`.

    k-diffusion: ``sample_euler``; diffusers: ``EulerDiscreteScheduler.step`` (``prev_sample = sample + derivative * dt``)."""
    return x_bar_ + (sigma_next - sigma) * d


def euler_ancestral_step(x_bar_, d, sigma: float, sigma_next: float, noise, eta: float = 1.0, s_noise: float = 1.0):
    r"""Euler to :math:`\sigma_{down}`, then :math:`+\,s_{noise}\,\sigma_{up}\,z`:
    :math:`\bar x_{i+1} = \bar x_i + (\sigma_{down} - \sigma_i)\,d_i + s_{noise}\sigma_{up} z`.

    ``noise()`` draws z, only when :math:`\sigma_{i+1} > 0` (k-diffusion; diffusers draws on the last step too,
    multiplied by :math:`\sigma_{up} = 0`). k-diffusion: ``sample_euler_ancestral``;
    diffusers: ``EulerAncestralDiscreteScheduler.step``."""
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
    x_next = x_bar_ + (sigma_down - sigma) * d
    if sigma_next > 0 and sigma_up > 0:
        x_next = x_next + noise() * (s_noise * sigma_up)
    return x_next


def heun_step(x_bar_, d, sigma: float, sigma_next: float, slope_at):
    r"""Karras Alg. 1, lines 5-8: the Euler guess :math:`\bar x' = \bar x_i + (\sigma_{i+1} - \sigma_i)d_i`, then
    :math:`\bar x_{i+1} = \bar x_i + (\sigma_{i+1} - \sigma_i)\,\tfrac12\big(d_i + d(\bar x'; \sigma_{i+1})\big)`;
    a plain Euler step when :math:`\sigma_{i+1} = 0`.

    ``slope_at(x_bar)`` evaluates :math:`d` at :math:`\sigma_{i+1}` (the second model call).
    k-diffusion: ``sample_heun``; diffusers: ``HeunDiscreteScheduler.step`` (first/second order halves)."""
    dt = sigma_next - sigma
    x_euler = x_bar_ + dt * d
    if sigma_next == 0:
        return x_euler
    return x_bar_ + dt * (d + slope_at(x_euler)) / 2


def _levels(grid, i):
    return float(grid.timesteps[i]), float(grid.sigmas[i]), float(grid.sigmas[i + 1])


@register("euler", "Euler", "Karras et al. 2022 Alg. 2 without churn: Euler steps of dx/dsigma = eps (DDIM in sigma)",
          grid_defaults=SIGMA_GRID)
def sample_euler(model, x, grid, noise):
    """Euler over the grid's σ levels. k-diffusion ``sample_euler``; diffusers ``EulerDiscreteScheduler``."""
    for i in range(grid.num_steps):
        t, sigma, sigma_next = _levels(grid, i)
        xb = x_bar(x, sigma)
        denoised = denoise(model, xb, sigma, t)
        x = x_vp(euler_step(xb, to_d(xb, sigma, denoised), sigma, sigma_next), sigma_next)
        yield Step(i, t, sigma, x, denoised)


@register("euler_a", "Euler a", "Euler ancestral: Euler down to sigma_down, fresh noise up to the next sigma",
          options={"eta": 1.0, "s_noise": 1.0}, stochastic=True, grid_defaults=SIGMA_GRID)
def sample_euler_ancestral(model, x, grid, noise, eta: float = 1.0, s_noise: float = 1.0):
    """Ancestral Euler over the grid. k-diffusion ``sample_euler_ancestral``; diffusers ``EulerAncestralDiscreteScheduler``."""
    for i in range(grid.num_steps):
        t, sigma, sigma_next = _levels(grid, i)
        xb = x_bar(x, sigma)
        denoised = denoise(model, xb, sigma, t)
        x = x_vp(euler_ancestral_step(xb, to_d(xb, sigma, denoised), sigma, sigma_next, noise, eta, s_noise), sigma_next)
        yield Step(i, t, sigma, x, denoised)


@register("heun", "Heun", "Karras et al. 2022 Alg. 1: Heun's 2nd-order method, 2 model calls per step (1 on the last)",
          grid_defaults=SIGMA_GRID)
def sample_heun(model, x, grid, noise):
    """Heun over the grid. k-diffusion ``sample_heun``; diffusers ``HeunDiscreteScheduler``."""
    for i in range(grid.num_steps):
        t, sigma, sigma_next = _levels(grid, i)
        t_next = float(grid.timesteps[i + 1])
        xb = x_bar(x, sigma)
        denoised = denoise(model, xb, sigma, t)
        slope_at = lambda x2: to_d(x2, sigma_next, denoise(model, x2, sigma_next, t_next))  # noqa: E731
        x = x_vp(heun_step(xb, to_d(xb, sigma, denoised), sigma, sigma_next, slope_at), sigma_next)
        yield Step(i, t, sigma, x, denoised)

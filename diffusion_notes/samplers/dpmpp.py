r"""DPM-Solver++ (Lu et al. 2022b): exponential integrators of the ODE in :math:`\lambda = -\log\sigma`, on the denoiser.

With :math:`t = -\log\sigma` (k-diffusion's time) the probability-flow ODE for :math:`\bar x` has the exact solution

.. math::
    \bar x_{t} = \frac{\sigma_{t}}{\sigma_{s}}\bar x_{s} + \sigma_{t}\int_{s}^{t} e^{\tau} D(\bar x_\tau; \sigma_\tau)\,d\tau ,

and DPM-Solver++ approximates :math:`D` inside the integral by a polynomial in :math:`\tau`
(DPM-Solver++ Eq. 9-10, Alg. 1-2). With :math:`h = t_{i+1} - t_i = \log(\sigma_i/\sigma_{i+1})`:

* first order (= DDIM): :math:`\bar x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}\bar x_i - (e^{-h} - 1)\,D_i`;
* 2M (Alg. 2, multistep): :math:`D_i` replaced by :math:`(1 + \frac1{2r})D_i - \frac1{2r}D_{i-1}`,
  :math:`r = h_{i-1}/h_i`; first order on the first step and on the last step to :math:`\sigma = 0`;
* 2M SDE (the SDE variant of Lu et al. 2022b Sec. 5 / Gonzalez et al.): :math:`\bar x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}e^{-\eta h}\bar x_i
  + (1 - e^{-(1+\eta)h})\,D'_i + \sigma_{i+1}\sqrt{1 - e^{-2\eta h}}\,s_{noise} z`;
* 2S ancestral (Alg. 1, single step, midpoint :math:`r = \frac12`) to :math:`\sigma_{down}`, then
  :math:`+\,\sigma_{up} z` (:func:`~diffusion_notes.samplers.sigma.ancestral_step`); two model calls per step.
"""

from __future__ import annotations

import math

from .registry import SIGMA_GRID, Step, register
from .sigma import ancestral_step, denoise, to_d, x_bar, x_vp

__all__ = ["dpmpp_first_order_step", "dpmpp_2m_step", "dpmpp_2m_sde_step", "dpmpp_2s_step", "sample_dpmpp_2m",
           "sample_dpmpp_2m_sde", "sample_dpmpp_2s_ancestral"]


def dpmpp_first_order_step(x_bar_, denoised, sigma: float, sigma_next: float):
    r"""DPM-Solver++ order 1 (= DDIM, :math:`\eta = 0`): :math:`\bar x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}\bar x_i - (e^{-h} - 1)D_i`,
    :math:`h = \log(\sigma_i/\sigma_{i+1})`; :math:`D_i` itself when :math:`\sigma_{i+1} = 0`.

    diffusers: ``DPMSolverMultistepScheduler.dpm_solver_first_order_update`` (``dpmsolver++``)."""
    if sigma_next == 0:
        return denoised
    h = math.log(sigma / sigma_next)
    return (sigma_next / sigma) * x_bar_ - math.expm1(-h) * denoised


def dpmpp_2m_step(x_bar_, denoised, old_denoised, sigma_prev: float, sigma: float, sigma_next: float):
    r"""DPM-Solver++(2M), Alg. 2: :math:`D' = (1 + \frac1{2r})D_i - \frac1{2r}D_{i-1}`, :math:`r = h_{i-1}/h_i`, then the first-order
    formula with :math:`D'`. First order when there is no :math:`D_{i-1}` or :math:`\sigma_{i+1} = 0`.

    k-diffusion: ``sample_dpmpp_2m``; diffusers: ``multistep_dpm_solver_second_order_update``
    (``dpmsolver++``, ``solver_type="midpoint"``: :math:`D_0 + \frac12 D_1` with :math:`D_1 = (D_i - D_{i-1})/r`)."""
    if old_denoised is None or sigma_next == 0 or sigma_next == sigma:  # (a zero-length last step is a no-op)
        return dpmpp_first_order_step(x_bar_, denoised, sigma, sigma_next)
    h, h_last = math.log(sigma / sigma_next), math.log(sigma_prev / sigma)
    r = h_last / h
    denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
    return dpmpp_first_order_step(x_bar_, denoised_d, sigma, sigma_next)


def dpmpp_2m_sde_step(x_bar_, denoised, old_denoised, sigma_prev: float, sigma: float, sigma_next: float, noise,
                      eta: float = 1.0, s_noise: float = 1.0):
    r"""DPM-Solver++(2M) SDE, midpoint: with :math:`h = \log(\sigma_i/\sigma_{i+1})`,

    .. math::
        \bar x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}e^{-\eta h}\bar x_i + (1 - e^{-(1+\eta)h})\Big(D_i + \frac{D_i - D_{i-1}}{2r}\Big)
                       + \sigma_{i+1}\sqrt{1 - e^{-2\eta h}}\;s_{noise}\,z ,

    the correction term dropped on the first step; :math:`D_i` itself when :math:`\sigma_{i+1} = 0` (no noise drawn).
    k-diffusion: ``sample_dpmpp_2m_sde`` (``solver_type="midpoint"``); diffusers: ``DPMSolverMultistepScheduler``
    (``algorithm_type="sde-dpmsolver++"``, where :math:`\eta = 1`)."""
    if sigma_next == 0:
        return denoised
    if sigma_next == sigma:  # a zero-length last step (grid ending at alphas_cumprod[0]): nothing to do
        return x_bar_
    h = math.log(sigma / sigma_next)
    eta_h = eta * h
    coefficient = -math.expm1(-h - eta_h)
    x_next = (sigma_next / sigma) * math.exp(-eta_h) * x_bar_ + coefficient * denoised
    if old_denoised is not None:
        r = math.log(sigma_prev / sigma) / h
        x_next = x_next + 0.5 * coefficient * (1 / r) * (denoised - old_denoised)
    if eta:
        x_next = x_next + noise() * (sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise)
    return x_next


def dpmpp_2s_step(x_bar_, denoised, sigma: float, sigma_down: float, denoise_at):
    r"""DPM-Solver++(2S), Alg. 1 with :math:`r = \frac12`, from :math:`\sigma_i` to :math:`\sigma_{down}`: with
    :math:`h = \log(\sigma_i/\sigma_{down})` and the midpoint :math:`\sigma_s = \sigma_i e^{-h/2}`,

    .. math::
        u = \frac{\sigma_s}{\sigma_i}\bar x_i - (e^{-h/2} - 1)D_i,\qquad
        \bar x_{down} = \frac{\sigma_{down}}{\sigma_i}\bar x_i - (e^{-h} - 1)\,D(u; \sigma_s);

    an Euler step when :math:`\sigma_{down} = 0`. ``denoise_at(u, sigma_s)`` is the second model call.
    k-diffusion: ``sample_dpmpp_2s_ancestral`` (no diffusers scheduler)."""
    if sigma_down == 0:
        return x_bar_ + (sigma_down - sigma) * to_d(x_bar_, sigma, denoised)
    h = math.log(sigma / sigma_down)
    sigma_s = sigma * math.exp(-h / 2)
    u = (sigma_s / sigma) * x_bar_ - math.expm1(-h / 2) * denoised
    return (sigma_down / sigma) * x_bar_ - math.expm1(-h) * denoise_at(u, sigma_s)


def _multistep(model, x, grid, update):
    """The loop both DPM++ 2M samplers share: at step i, ``x_next = update(x_bar, denoised, old_denoised,
    sigma_prev, sigma, sigma_next)`` in k-diffusion's variable (``sigma.x_bar``), with ``old_denoised``
    the previous step's prediction of x_0 (None at the first step, where ``update`` is first order)."""
    old_denoised = None
    for i in range(grid.num_steps):
        t, sigma, sigma_next = float(grid.timesteps[i]), float(grid.sigmas[i]), float(grid.sigmas[i + 1])
        sigma_prev = float(grid.sigmas[i - 1]) if i > 0 else None
        xb = x_bar(x, sigma)
        denoised = denoise(model, xb, sigma, t)
        x = x_vp(update(xb, denoised, old_denoised, sigma_prev, sigma, sigma_next), sigma_next)
        old_denoised = denoised
        yield Step(i, t, sigma, x, denoised)


@register("dpmpp_2m", "DPM++ 2M", "DPM-Solver++(2M) (Lu et al. 2022b Alg. 2): 2nd-order multistep on the denoiser",
          grid_defaults=SIGMA_GRID)
def sample_dpmpp_2m(model, x, grid, noise):
    """DPM++ 2M over the grid. k-diffusion ``sample_dpmpp_2m``; diffusers ``DPMSolverMultistepScheduler`` (``dpmsolver++``, order 2)."""
    return _multistep(model, x, grid, dpmpp_2m_step)


@register("dpmpp_2m_sde", "DPM++ 2M SDE", "DPM-Solver++(2M) for the reverse SDE (midpoint): fresh noise every step",
          options={"eta": 1.0, "s_noise": 1.0}, stochastic=True, grid_defaults=SIGMA_GRID)
def sample_dpmpp_2m_sde(model, x, grid, noise, eta: float = 1.0, s_noise: float = 1.0):
    """DPM++ 2M SDE over the grid (i.i.d. noise from the run's generator; k-diffusion defaults to a Brownian tree).
    k-diffusion ``sample_dpmpp_2m_sde``; diffusers ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")``."""

    def update(xb, denoised, old_denoised, sigma_prev, sigma, sigma_next):
        return dpmpp_2m_sde_step(xb, denoised, old_denoised, sigma_prev, sigma, sigma_next, noise, eta, s_noise)

    return _multistep(model, x, grid, update)


@register("dpmpp_2s_a", "DPM++ 2S a", "DPM-Solver++(2S) (Alg. 1, midpoint) to sigma_down, then ancestral noise; 2 calls per step",
          options={"eta": 1.0, "s_noise": 1.0}, stochastic=True, grid_defaults=SIGMA_GRID)
def sample_dpmpp_2s_ancestral(model, x, grid, noise, eta: float = 1.0, s_noise: float = 1.0):
    """DPM++ 2S ancestral over the grid; the midpoint's timestep is :meth:`SamplingGrid.t_at_sigma` (real-valued).
    k-diffusion ``sample_dpmpp_2s_ancestral``."""
    for i in range(grid.num_steps):
        t, sigma, sigma_next = float(grid.timesteps[i]), float(grid.sigmas[i]), float(grid.sigmas[i + 1])
        xb = x_bar(x, sigma)
        denoised = denoise(model, xb, sigma, t)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        denoise_at = lambda u, s: denoise(model, u, s, grid.t_at_sigma(s))  # noqa: E731
        xb = dpmpp_2s_step(xb, denoised, sigma, sigma_down, denoise_at)
        if sigma_next > 0 and sigma_up > 0:
            xb = xb + noise() * (s_noise * sigma_up)
        x = x_vp(xb, sigma_next)
        yield Step(i, t, sigma, x, denoised)

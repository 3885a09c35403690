r"""The forward (noising) process and the conversions between what a network may predict.

A network sees :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon` and predicts one of
:math:`\epsilon` (DDPM), :math:`x_0`, or :math:`v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0`
(Salimans & Ho 2022, used by SD 2.x-768). Given :math:`x_t` and any one of the three, the other two
follow by the linear algebra below. Function names are CompVis's (``ldm/models/diffusion/ddpm.py``).

``t`` is always an integer tensor of shape (B,) (one timestep per batch element, 0-based).
"""

from __future__ import annotations

import torch

from .schedules import NoiseSchedule

__all__ = [
    "extract_into_tensor",
    "q_sample",
    "q_posterior_mean_variance",
    "predict_start_from_noise",
    "predict_noise_from_start",
    "get_v",
    "predict_start_from_z_and_v",
    "predict_eps_from_z_and_v",
]


def extract_into_tensor(a: torch.Tensor, t: torch.Tensor, x_shape) -> torch.Tensor:
    """``a[t]`` reshaped to (B, 1, 1, ...) so it broadcasts against a batch of shape ``x_shape``.

    The gather happens in ``a``'s dtype (float64 for a NoiseSchedule) before the caller's
    arithmetic casts, so the coefficient itself is exact. CompVis: ``extract_into_tensor``.
    """
    t = torch.as_tensor(t, device=a.device).long()
    return a.gather(-1, t).reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


def _coef(buffer: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
    return extract_into_tensor(buffer, t, x.shape).to(device=x.device, dtype=x.dtype)


def q_sample(x0: torch.Tensor, t, noise: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    r"""Jump straight to step t: :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon`.

    DDPM (Ho et al. 2020) Eq. 4, :math:`q(x_t|x_0) = \mathcal N(\sqrt{\bar\alpha_t}x_0, (1-\bar\alpha_t)I)`,
    written with the reparameterisation trick. CompVis: ``DDPM.q_sample``; diffusers: ``scheduler.add_noise``.
    """
    return _coef(schedule.sqrt_alphas_cumprod, t, x0) * x0 + _coef(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def q_posterior_mean_variance(x0: torch.Tensor, x_t: torch.Tensor, t, schedule: NoiseSchedule):
    r"""The forward-process posterior :math:`q(x_{t-1} | x_t, x_0) = \mathcal N(\tilde\mu_t, \tilde\beta_t I)`.

    DDPM Eq. 6-7:
    :math:`\tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\beta_t}{1-\bar\alpha_t}x_0 + \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t`,
    :math:`\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t`.

    Returns ``(posterior_mean, posterior_variance, posterior_log_variance_clipped)``, the latter two
    broadcastable against ``x_t``. CompVis: ``DDPM.q_posterior``.
    """
    posterior_mean = _coef(schedule.posterior_mean_coef1, t, x_t) * x0 + _coef(schedule.posterior_mean_coef2, t, x_t) * x_t
    posterior_variance = _coef(schedule.posterior_variance, t, x_t)
    posterior_log_variance_clipped = _coef(schedule.posterior_log_variance_clipped, t, x_t)
    return posterior_mean, posterior_variance, posterior_log_variance_clipped


def predict_start_from_noise(x_t: torch.Tensor, t, noise: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    r""":math:`\hat x_0 = \frac{1}{\sqrt{\bar\alpha_t}}x_t - \sqrt{\frac{1}{\bar\alpha_t}-1}\;\epsilon`: DDPM Eq. 4 solved for :math:`x_0`
    (the seed's ``pred_x0``; DDIM Eq. 12's "predicted :math:`x_0`"). CompVis: ``DDPM.predict_start_from_noise``."""
    return _coef(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - _coef(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * noise


def predict_noise_from_start(x_t: torch.Tensor, t, x0: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    r""":math:`\epsilon = \big(\frac{1}{\sqrt{\bar\alpha_t}}x_t - x_0\big) / \sqrt{\frac{1}{\bar\alpha_t}-1}`: DDPM Eq. 4 solved for
    :math:`\epsilon`. CompVis: ``LatentDiffusion.predict_noise_from_start`` (``_predict_eps_from_xstart`` in guided-diffusion)."""
    return (_coef(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / _coef(schedule.sqrt_recipm1_alphas_cumprod, t, x_t)


def get_v(x0: torch.Tensor, noise: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
    r"""The v-prediction target :math:`v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0`
    (Salimans & Ho 2022, Sec. 4 / App. D). CompVis (SD 2): ``DDPM.get_v(x, noise, t)``;
    diffusers: ``scheduler.get_velocity(sample, noise, timesteps)``."""
    return _coef(schedule.sqrt_alphas_cumprod, t, x0) * noise - _coef(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0


def predict_start_from_z_and_v(x_t: torch.Tensor, t, v: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    r""":math:`\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,v` (Salimans & Ho 2022).
    CompVis (SD 2): ``DDPM.predict_start_from_z_and_v``."""
    return _coef(schedule.sqrt_alphas_cumprod, t, x_t) * x_t - _coef(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * v


def predict_eps_from_z_and_v(x_t: torch.Tensor, t, v: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    r""":math:`\hat\epsilon = \sqrt{\bar\alpha_t}\,v + \sqrt{1-\bar\alpha_t}\,x_t` (Salimans & Ho 2022).
    CompVis (SD 2): ``DDPM.predict_eps_from_z_and_v``."""
    return _coef(schedule.sqrt_alphas_cumprod, t, x_t) * v + _coef(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t

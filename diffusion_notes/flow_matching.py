r"""Flow matching and rectified flow: the straight path from data to noise, its velocity, and its loss.

Stable Diffusion 3 and FLUX are trained this way (Esser et al. 2024, Sec. 2-3). The data :math:`x_0` and the
noise :math:`\epsilon` are joined by a straight line, and a network learns the velocity along it:

* the path (Lipman et al. 2023, Sec. 4.1 with :math:`\sigma_{min} = 0`; Liu et al. 2023, Eq. 1):
  :math:`x_t = (1-t)\,x_0 + t\,\epsilon`, with :math:`t = 0` the data and :math:`t = 1` pure noise
  (the SD3 / diffusers direction; Lipman et al. run time the other way);
* its velocity, the regression target: :math:`u = dx_t/dt = \epsilon - x_0`;
* the conditional flow-matching loss (Lipman et al. 2023, Eq. 9):
  :math:`\mathcal L_{CFM} = \mathbb E_{t, x_0, \epsilon}\,\|v_\theta(x_t, t) - (\epsilon - x_0)\|^2`.

Everything is the special case :math:`\alpha_t = 1-t`, :math:`\sigma_t = t` of the affine path
:math:`x_t = \alpha_t x_0 + \sigma_t\epsilon` (Lipman et al. 2024, *Flow Matching Guide and Code*, Sec. 4.8), of which
the diffusion (variance-preserving) path :math:`\alpha_t = \sqrt{\bar\alpha_t}`, :math:`\sigma_t = \sqrt{1-\bar\alpha_t}`
is another: :func:`vp_to_flow` and :func:`flow_to_vp` move a sample between the two exactly, which is why DDIM
with :math:`\eta = 0` *is* Euler's method on the flow ODE (notebook 20 and ``tests/test_flow_matching.py`` show it to
float64 rounding).

The noise level of a flow model is :math:`t` itself; SD3 calls it ``sigmas`` (diffusers
``FlowMatchEulerDiscreteScheduler.sigmas``), and feeds the network the timestep :math:`1000\,t`.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "flow_path", "flow_velocity_target", "cfm_loss",
    "x0_from_velocity", "eps_from_velocity", "velocity_from_eps", "velocity_from_x0",
    "affine_path", "affine_velocity",
    "vp_to_flow", "flow_to_vp",
    "shift_sigmas", "logit_normal_density", "sample_logit_normal", "flux_mu", "flux_time_shift",
    "mixture_velocity",
]


def _as_column(t, like: torch.Tensor) -> torch.Tensor:
    """``t`` (a number or a (B,) tensor) shaped to broadcast against a batch ``like`` (B, ...)."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(t.shape + (1,) * (like.dim() - t.dim())) if t.dim() else t


def flow_path(x0: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
    r""":math:`x_t = (1-t)\,x_0 + t\,\epsilon` (rectified flow, Liu et al. 2023 Eq. 1; SD3's forward process,
    Esser et al. 2024 Sec. 3). diffusers: ``FlowMatchEulerDiscreteScheduler.scale_noise``."""
    t = _as_column(t, x0)
    return (1 - t) * x0 + t * eps


def flow_velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    r""":math:`u = dx_t/dt = \epsilon - x_0`: the velocity of the straight path, the network's target
    (SD3 training: ``target = noise - model_input``)."""
    return eps - x0


def cfm_loss(v_pred: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    r"""The conditional flow-matching loss :math:`\|v_\theta(x_t, t) - (\epsilon - x_0)\|^2`, averaged over every
    element (Lipman et al. 2023, Eq. 9; rectified flow, Liu et al. 2023, Eq. 1)."""
    return ((v_pred - flow_velocity_target(x0, eps)) ** 2).mean()


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t) -> torch.Tensor:
    r""":math:`\hat x_0 = x_t - t\,v` (diffusers ``FlowMatchEulerDiscreteScheduler``: ``x0 = sample - sigma * model_output``)."""
    return x_t - _as_column(t, x_t) * v


def eps_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t) -> torch.Tensor:
    r""":math:`\hat\epsilon = x_t + (1-t)\,v`."""
    return x_t + (1 - _as_column(t, x_t)) * v


def velocity_from_eps(x_t: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
    r""":math:`v = (\epsilon - x_t)/(1-t)`: the velocity of an :math:`\epsilon`-prediction (undefined at :math:`t = 1`)."""
    return (eps - x_t) / (1 - _as_column(t, x_t))


def velocity_from_x0(x_t: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
    r""":math:`v = (x_t - x_0)/t`: the velocity of an :math:`x_0`-prediction (undefined at :math:`t = 0`)."""
    return (x_t - x0) / _as_column(t, x_t)


def affine_path(x0: torch.Tensor, eps: torch.Tensor, alpha_t, sigma_t) -> torch.Tensor:
    r"""The affine probability path :math:`x_t = \alpha_t x_0 + \sigma_t\epsilon` (Lipman et al. 2024, Eq. 4.52):
    :math:`\alpha_t = 1-t, \sigma_t = t` is :func:`flow_path`; :math:`\alpha_t = \sqrt{\bar\alpha_t}, \sigma_t = \sqrt{1-\bar\alpha_t}`
    is DDPM Eq. 4."""
    return _as_column(alpha_t, x0) * x0 + _as_column(sigma_t, x0) * eps


def affine_velocity(x0: torch.Tensor, eps: torch.Tensor, d_alpha_t, d_sigma_t) -> torch.Tensor:
    r""":math:`u_t = \dot\alpha_t x_0 + \dot\sigma_t\epsilon`, the velocity of :func:`affine_path` (the time derivatives
    given). For the trigonometric path :math:`\alpha = \cos\phi, \sigma = \sin\phi` it is
    :math:`\dot\phi\,(\cos\phi\,\epsilon - \sin\phi\,x_0) = \dot\phi\,v`: v-prediction (Salimans & Ho 2022) is the
    velocity of that path in the angle :math:`\phi`."""
    return _as_column(d_alpha_t, x0) * x0 + _as_column(d_sigma_t, x0) * eps


def vp_to_flow(x_t: torch.Tensor, alpha_bar) -> tuple[torch.Tensor, torch.Tensor]:
    r"""A variance-preserving sample :math:`x_t = \sqrt{\bar\alpha}x_0 + \sqrt{1-\bar\alpha}\epsilon` as a point of the
    straight path: returns :math:`(z, t)` with :math:`z = (1-t)x_0 + t\epsilon`.

    Divide by :math:`\sqrt{\bar\alpha} + \sqrt{1-\bar\alpha}`: the coefficients then sum to one, so
    :math:`t = \sqrt{1-\bar\alpha}/(\sqrt{\bar\alpha} + \sqrt{1-\bar\alpha}) = \sigma/(1+\sigma)` with the σ view's
    :math:`\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}`, and :math:`z = \bar x/(1+\sigma)` with :math:`\bar x = x_t/\sqrt{\bar\alpha}`."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64)
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    t = s / (a + s)
    return x_t / _as_column((a + s).to(x_t.dtype), x_t), t


def flow_to_vp(z: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The inverse of :func:`vp_to_flow`: :math:`(x_t, \bar\alpha)` with :math:`\sigma = t/(1-t)`,
    :math:`\bar\alpha = 1/(1+\sigma^2)` and :math:`x_t = z\,(\sqrt{\bar\alpha} + \sqrt{1-\bar\alpha})`."""
    t = torch.as_tensor(t, dtype=torch.float64)
    alpha_bar = (1 - t) ** 2 / ((1 - t) ** 2 + t**2)
    scale = alpha_bar.sqrt() + (1 - alpha_bar).sqrt()
    return z * _as_column(scale.to(z.dtype), z), alpha_bar


def shift_sigmas(sigmas, shift: float):
    r"""SD3's timestep shift :math:`\sigma' = \dfrac{s\,\sigma}{1 + (s-1)\,\sigma}` (Esser et al. 2024, Eq. 23 with
    :math:`s = \sqrt{m/n}`; SD3 uses :math:`s = 3`). It keeps 0 and 1 and moves every level in between towards the noise,
    where a larger image (more pixels carrying the same information) needs more steps. diffusers:
    ``FlowMatchEulerDiscreteScheduler(shift=...)``."""
    if not (shift > 0 and math.isfinite(shift)):
        raise ValueError(f"shift must be a positive finite number, got {shift}")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def logit_normal_density(t: torch.Tensor, m: float = 0.0, s: float = 1.0) -> torch.Tensor:
    r"""The logit-normal density :math:`\pi_{ln}(t; m, s) = \frac{1}{s\sqrt{2\pi}}\,\frac{1}{t(1-t)}\,
    \exp\!\big(-\frac{(\operatorname{logit}(t) - m)^2}{2s^2}\big)` (Esser et al. 2024, Eq. 19): SD3 draws its training
    :math:`t` from it (:math:`m = 0, s = 1`), so the middle of the path, where the velocity is hardest to predict,
    gets the most training."""
    logit = torch.log(t) - torch.log1p(-t)
    return torch.exp(-((logit - m) ** 2) / (2 * s**2)) / (s * math.sqrt(2 * math.pi) * t * (1 - t))


def sample_logit_normal(n: int, m: float = 0.0, s: float = 1.0, generator: torch.Generator | None = None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r""":math:`t = \operatorname{sigmoid}(m + s\,u)`, :math:`u \sim \mathcal N(0, 1)`: ``n`` draws from :func:`logit_normal_density`
    (SD3's ``weighting_scheme="logit_normal"``, diffusers ``compute_density_for_timestep_sampling``)."""
    return torch.sigmoid(m + s * torch.randn(n, generator=generator, dtype=dtype))


def flux_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
            base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    r"""FLUX's resolution-dependent shift parameter: :math:`\mu` linear in the number of image tokens, from
    ``base_shift`` at 256 tokens to ``max_shift`` at 4096 (diffusers ``calculate_shift``; FLUX.1's defaults)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + slope * (image_seq_len - base_seq_len)


def flux_time_shift(mu: float, t, sigma: float = 1.0):
    r"""FLUX's shift :math:`t' = \dfrac{e^{\mu}}{e^{\mu} + (1/t - 1)^{\sigma}}` (diffusers ``time_shift``,
    ``time_shift_type="exponential"``). With :math:`\sigma = 1` it is :func:`shift_sigmas` with :math:`s = e^{\mu}`:
    the same shift, its size set by the image's token count."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def mixture_velocity(mixture, z: torch.Tensor, t) -> torch.Tensor:
    r"""The exact velocity field :math:`u^*(z, t) = \mathbb E[\epsilon - x_0 \mid x_t = z]` of a
    :class:`~diffusion_notes.mixture.GaussianMixture`: the best a flow-matching network can learn.

    :math:`z/(1-t) = x_0 + \frac{t}{1-t}\epsilon` is the σ view's :math:`\bar x` at :math:`\sigma = t/(1-t)`, where the
    mixture's optimal :math:`\epsilon^*` is known in closed form; then :math:`u^* = (\epsilon^* - z)/(1-t)`
    (:func:`velocity_from_eps`)."""
    t = torch.as_tensor(t, dtype=z.dtype)
    sigma = t / (1 - t)
    eps = mixture.eps_at_sigma(z / _as_column(1 - t, z), sigma)
    return velocity_from_eps(z, eps, t)

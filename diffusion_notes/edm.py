r"""EDM's training side (Karras, Aittala, Aila & Laine 2022, Sec. 5 and Table 1) and its stochastic sampler (Alg. 2).

EDM writes the denoiser as a *preconditioned* network :math:`F_\theta`:

.. math::
    D_\theta(x; \sigma) = c_{skip}(\sigma)\,x + c_{out}(\sigma)\,F_\theta\big(c_{in}(\sigma)\,x;\ c_{noise}(\sigma)\big),

with :math:`x = x_0 + \sigma n` in the σ view (notebook 9) and the coefficients of Table 1 ("ours"):

* :math:`c_{in} = 1/\sqrt{\sigma^2 + \sigma_{data}^2}`: the network's input has unit variance at every σ;
* :math:`c_{skip} = \sigma_{data}^2/(\sigma^2 + \sigma_{data}^2)`, :math:`c_{out} = \sigma\sigma_{data}/\sqrt{\sigma^2 + \sigma_{data}^2}`: chosen so
  that the network's *target* :math:`(x_0 - c_{skip}x)/c_{out}` has unit variance too, and the network's errors are
  amplified as little as possible (App. B.6);
* :math:`c_{noise} = \tfrac14\ln\sigma`;

trained on :math:`\lambda(\sigma)\,\lVert D_\theta(x_0 + \sigma n; \sigma) - x_0\rVert^2` with
:math:`\lambda(\sigma) = (\sigma^2 + \sigma_{data}^2)/(\sigma\sigma_{data})^2 = 1/c_{out}^2`, which makes the loss of the
*network* :math:`\lVert F_\theta - \text{target}\rVert^2` with weight 1 at every σ, and with
:math:`\ln\sigma \sim \mathcal N(P_{mean}, P_{std}^2)`, :math:`P_{mean} = -1.2`, :math:`P_{std} = 1.2`.

k-diffusion: ``layers.Denoiser`` (``get_scalings``) and ``sample_heun(..., s_churn=...)``; diffusers:
``EDMEulerScheduler.precondition_inputs`` / ``precondition_outputs`` / ``precondition_noise``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["SIGMA_DATA", "P_MEAN", "P_STD", "preconditioning", "loss_weight", "sample_training_sigmas",
           "preconditioned_denoiser", "edm_loss", "churn_gamma", "sample_edm"]

SIGMA_DATA, P_MEAN, P_STD = 0.5, -1.2, 1.2  # Table 1: the data's std, and the log-normal training distribution of sigma


def preconditioning(sigma, sigma_data: float = SIGMA_DATA):
    r"""``(c_skip, c_out, c_in, c_noise)`` of Karras et al. 2022, Table 1 (EDM column), for noise level(s) ``sigma``."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_noise = torch.log(sigma) / 4
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma, sigma_data: float = SIGMA_DATA):
    r""":math:`\lambda(\sigma) = (\sigma^2 + \sigma_{data}^2)/(\sigma\,\sigma_{data})^2` (Table 1), equal to :math:`1/c_{out}^2`."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_training_sigmas(n: int, p_mean: float = P_MEAN, p_std: float = P_STD,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    r""":math:`\ln\sigma \sim \mathcal N(P_{mean}, P_{std}^2)` (Table 1: the noise levels EDM trains on)."""
    return torch.exp(p_mean + p_std * torch.randn(n, generator=generator))


def preconditioned_denoiser(network: Callable, sigma_data: float = SIGMA_DATA) -> Callable:
    r""":math:`D_\theta(x;\sigma) = c_{skip}x + c_{out}F_\theta(c_{in}x; c_{noise})` as ``D(x, sigma, *cond)``: ``network(x_in,
    c_noise, *cond)`` is :math:`F_\theta`, called with one :math:`c_{noise}` per batch element."""

    def denoiser(x: torch.Tensor, sigma, *cond) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = (c.to(x.dtype) for c in preconditioning(sigma, sigma_data))
        shape = (-1,) + (1,) * (x.dim() - 1)
        return c_skip.reshape(shape) * x + c_out.reshape(shape) * network(c_in.reshape(shape) * x, c_noise, *cond)

    return denoiser


def edm_loss(denoiser: Callable, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, *cond,
             sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    r""":math:`\mathbb E\,\lambda(\sigma)\,\lVert D_\theta(x_0 + \sigma n; \sigma) - x_0\rVert^2` (Karras et al. 2022, Eq. 8 with
    Table 1's :math:`\lambda`), averaged over batch and pixels."""
    shape = (-1,) + (1,) * (x0.dim() - 1)
    weight = loss_weight(sigma, sigma_data).to(x0.dtype).reshape(shape)
    return (weight * (denoiser(x0 + sigma.to(x0.dtype).reshape(shape) * noise, sigma, *cond) - x0) ** 2).mean()


def churn_gamma(sigma: float, num_steps: int, s_churn: float, s_tmin: float = 0.0, s_tmax: float = math.inf) -> float:
    r""":math:`\gamma_i = \min(S_{churn}/N, \sqrt2 - 1)` if :math:`\sigma_i \in [S_{tmin}, S_{tmax}]`, else 0 (Karras Alg. 2, line 4)."""
    return min(s_churn / num_steps, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0


def sample_edm(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor, s_churn: float = 0.0, s_tmin: float = 0.0,
               s_tmax: float = math.inf, s_noise: float = 1.0, noise: Callable[[], torch.Tensor] | None = None,
               callback: Callable | None = None) -> torch.Tensor:
    r"""Karras et al. 2022, Algorithm 2: Heun's method with stochastic churn, from :math:`x = \sigma_0 n` down the levels
    ``sigmas`` (ending at 0). At each step (lines 4-6) the noise is first raised from :math:`\sigma_i` to
    :math:`\hat\sigma_i = (1 + \gamma_i)\sigma_i` by adding :math:`\sqrt{\hat\sigma_i^2 - \sigma_i^2}\,S_{noise}\,\epsilon`, then the
    Heun step (lines 7-11) goes from :math:`\hat\sigma_i` to :math:`\sigma_{i+1}` (Euler when :math:`\sigma_{i+1} = 0`).

    ``denoiser(x, sigma)`` is :math:`D(x;\sigma)`. ``noise()`` draws :math:`\epsilon` once per step, whether or not the step
    churns, as k-diffusion's ``sample_heun`` does (so the same generator gives the same run as there); without
    ``noise``, ``torch.randn_like``. With ``s_churn = 0`` this is Algorithm 1 (the package's ``heun`` sampler)."""
    draw = noise if noise is not None else (lambda: torch.randn_like(x))
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = churn_gamma(sigma, n, s_churn, s_tmin, s_tmax)
        eps = draw() * s_noise
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
        denoised = denoiser(x, sigma_hat)
        d = (x - denoised) / sigma_hat
        dt = sigma_next - sigma_hat
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - denoiser(x_2, sigma_next)) / sigma_next
            x = x + (d + d_2) / 2 * dt
        if callback is not None:
            callback(i, sigma_hat, x, denoised)
    return x

r"""The variational bound of a DDPM, term by term (Ho et al. 2020, Eq. 5 and 13; Sohl-Dickstein et al. 2015).

.. math::
    L = \underbrace{D_{KL}\big(q(x_T\mid x_0)\,\|\,p(x_T)\big)}_{L_T}
      + \sum_{t>1}\underbrace{D_{KL}\big(q(x_{t-1}\mid x_t, x_0)\,\|\,p_\theta(x_{t-1}\mid x_t)\big)}_{L_{t-1}}
      \underbrace{-\log p_\theta(x_0\mid x_1)}_{L_0} \;\ge\; -\log p_\theta(x_0).

Every term is a closed form: :func:`gaussian_kl` for the KL terms, :func:`discretized_gaussian_log_likelihood` for the
decoder :math:`L_0` (data on a grid of bins, Eq. 13). Timesteps are 0-based: the paper's :math:`t = 1..T` is
``0..T-1`` here, so :math:`L_0` uses index 0 and :math:`L_T` index ``T-1``.

The reverse variance :math:`\sigma_t^2` is fixed, as in DDPM: ``"posterior"`` (:math:`\tilde\beta_t`, CompVis
``fixed_small``) or ``"beta"`` (:math:`\beta_t`, ``fixed_large``). At index 0 :math:`\tilde\beta` is 0, so both use
:math:`\tilde\beta` of index 1 there, as improved DDPM's code does (``posterior_variance[1]``). The results are in nats
per image; :func:`bits_per_dim` divides by the number of dimensions and :math:`\ln 2`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .forward import q_posterior_mean_variance, q_sample
from .schedules import NoiseSchedule

__all__ = ["gaussian_kl", "discretized_gaussian_log_likelihood", "reverse_variance", "learned_range_variance", "p_mean",
           "prior_term", "kl_term", "decoder_term", "eps_weight", "VariationalBound", "variational_bound", "bits_per_dim"]

VARIANCES = ("posterior", "beta")


def gaussian_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    r""":math:`D_{KL}(\mathcal N(\mu_1, e^{\ell_1})\,\|\,\mathcal N(\mu_2, e^{\ell_2})) = \tfrac12\big(-1 + \ell_2 - \ell_1 + e^{\ell_1 - \ell_2} + (\mu_1 - \mu_2)^2 e^{-\ell_2}\big)`,
    element by element, in nats (guided-diffusion ``normal_kl``)."""
    mean1, logvar1, mean2, logvar2 = (torch.as_tensor(v, dtype=torch.float64) if not torch.is_tensor(v) else v
                                      for v in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, bin_width: float,
                                        low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    r""":math:`\log \int_{\delta_-(x)}^{\delta_+(x)} \mathcal N(y; \mu, \sigma^2)\,dy` element by element (Ho et al. 2020, Eq. 13): the
    data sit on a grid of bins of width ``bin_width`` between ``low`` and ``high`` (2/255 for 8-bit images in [-1, 1];
    2/16 for scikit-learn's 17-level digits); the first and last bins extend to :math:`\mp\infty`. ``log_scale`` is
    :math:`\log\sigma`."""
    inv_std = torch.exp(-log_scale)
    upper = torch.where(x > high - bin_width / 2, torch.full_like(x, math.inf), (x + bin_width / 2 - mean) * inv_std)
    lower = torch.where(x < low + bin_width / 2, torch.full_like(x, -math.inf), (x - bin_width / 2 - mean) * inv_std)
    # log(Phi(upper) - Phi(lower)) from log Phi, in the nearer tail (Phi(-lower) - Phi(-upper) right of the mean), so
    # that a bin many standard deviations out keeps its precision (1 - Phi loses it, and torch's ndtr too)
    right_tail = lower > 0
    near, far = torch.where(right_tail, -lower, upper), torch.where(right_tail, -upper, lower)
    log_near, log_far = torch.special.log_ndtr(near), torch.special.log_ndtr(far)
    return log_near + torch.log(-torch.expm1(log_far - log_near))


def reverse_variance(schedule: NoiseSchedule, variance: str = "posterior") -> torch.Tensor:
    r"""The fixed :math:`\sigma_t^2` of :math:`p_\theta(x_{t-1}\mid x_t) = \mathcal N(\mu_\theta, \sigma_t^2 I)` at every index
    (float64): :math:`\tilde\beta_t` or :math:`\beta_t`, with index 0 set to :math:`\tilde\beta` of index 1 (see the module)."""
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, not {variance!r}")
    base = schedule.posterior_variance if variance == "posterior" else schedule.betas
    out = base.double().clone()
    out[0] = schedule.posterior_variance[1].double()
    return out


def learned_range_variance(model_v: torch.Tensor, t: int, schedule: NoiseSchedule) -> torch.Tensor:
    r"""Improved DDPM's learned variance (Nichol & Dhariwal 2021, Eq. 15): the network outputs :math:`v` and
    :math:`\Sigma_\theta = \exp\big(v'\log\beta_t + (1-v')\log\tilde\beta_t\big)` with :math:`v' = (v+1)/2` mapping the output
    range [-1, 1] to the interpolation [0, 1] (their code's ``model_var_values``): anywhere between the two fixed choices,
    trained with :math:`L_\text{hybrid} = L_\text{simple} + 0.001\,L_\text{vlb}`. At index 0, :math:`\tilde\beta` of index 1 as in
    :func:`reverse_variance` (diffusers clamps :math:`\tilde\beta_0 = 0` to :math:`10^{-20}` instead). diffusers:
    ``DDPMScheduler(variance_type="learned_range")``."""
    fraction = (model_v.double() + 1) / 2
    log_small = torch.log(reverse_variance(schedule, "posterior")[t])
    log_large = torch.log(schedule.betas.double()[t])
    return torch.exp(fraction * log_large + (1 - fraction) * log_small)


def p_mean(x_t: torch.Tensor, t: torch.Tensor, e_t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    r""":math:`\mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\epsilon_\theta\big)` (DDPM Eq. 11)."""
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    alpha = schedule.alphas.double()[t].reshape(shape)
    beta = schedule.betas.double()[t].reshape(shape)
    one_minus_abar = (1 - schedule.alphas_cumprod.double()[t]).reshape(shape)
    return (x_t - beta / one_minus_abar.sqrt() * e_t) / alpha.sqrt()


def _per_image(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


def prior_term(x0: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    r""":math:`L_T = D_{KL}(q(x_T\mid x_0)\,\|\,\mathcal N(0, I))` per image, in nats: no parameters, and small when
    :math:`\bar\alpha_T \approx 0`."""
    x0 = x0.double()
    abar = schedule.alphas_cumprod.double()[-1]
    return _per_image(gaussian_kl(abar.sqrt() * x0, torch.log(1 - abar), torch.zeros_like(x0), torch.zeros_like(x0)))


def kl_term(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, e_t: torch.Tensor, schedule: NoiseSchedule,
            variance: str = "posterior") -> torch.Tensor:
    r""":math:`L_{t-1} = D_{KL}(q(x_{t-1}\mid x_t, x_0)\,\|\,p_\theta(x_{t-1}\mid x_t))` per image (0-based ``t`` >= 1), in nats:
    the posterior of DDPM Eq. 6-7 against :math:`\mathcal N(\mu_\theta, \sigma_t^2 I)`."""
    x0, x_t, e_t = x0.double(), x_t.double(), e_t.double()
    mean, _, log_var = q_posterior_mean_variance(x0, x_t, t, schedule.to(dtype=torch.float64))
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    model_log_var = torch.log(reverse_variance(schedule, variance))[t].reshape(shape)
    return _per_image(gaussian_kl(mean, log_var.double(), p_mean(x_t, t, e_t, schedule), model_log_var))


def decoder_term(x0: torch.Tensor, x_1: torch.Tensor, e_1: torch.Tensor, schedule: NoiseSchedule, bin_width: float,
                 variance: str = "posterior") -> torch.Tensor:
    r""":math:`L_0 = -\log p_\theta(x_0\mid x_1)` per image, in nats: the discretised Gaussian of Eq. 13 with mean
    :math:`\mu_\theta(x_1, 1)` and the index-0 variance."""
    t = torch.zeros(x0.shape[0], dtype=torch.long)
    mean = p_mean(x_1.double(), t, e_1.double(), schedule)
    log_scale = 0.5 * torch.log(reverse_variance(schedule, variance)[0])
    return -_per_image(discretized_gaussian_log_likelihood(x0.double(), mean, log_scale.expand_as(mean), bin_width))


def eps_weight(schedule: NoiseSchedule, variance: str = "posterior") -> torch.Tensor:
    r"""The weight :math:`\lambda_t = \frac{\beta_t^2}{2\sigma_t^2\alpha_t(1-\bar\alpha_t)}` that turns :math:`L_{t-1}` into a weighted
    :math:`\epsilon` error, :math:`L_{t-1} = \lambda_t\,\lVert\epsilon - \epsilon_\theta\rVert^2 + C_t` (Ho et al. 2020, Eq. 12;
    :math:`C_t = 0` when :math:`\sigma_t^2 = \tilde\beta_t`). :math:`L_\text{simple}` (Eq. 14) sets every :math:`\lambda_t` to 1."""
    betas, alphas, abar = schedule.betas.double(), schedule.alphas.double(), schedule.alphas_cumprod.double()
    return betas**2 / (2 * reverse_variance(schedule, variance) * alphas * (1 - abar))


@dataclass(frozen=True)
class VariationalBound:
    """The bound's terms for a batch, in nats per image: ``prior`` (B,), ``kl`` (T-1, B) for 0-based t = 1..T-1
    (the paper's :math:`L_1 \\dots L_{T-1}`), ``decoder`` (B,); ``total`` (B,); ``dims``: dimensions per image."""

    prior: torch.Tensor
    kl: torch.Tensor
    decoder: torch.Tensor
    dims: int

    @property
    def total(self) -> torch.Tensor:
        return self.prior + self.kl.sum(0) + self.decoder


def variational_bound(eps_model: Callable, x0: torch.Tensor, schedule: NoiseSchedule, bin_width: float,
                      variance: str = "posterior", generator: torch.Generator | None = None) -> VariationalBound:
    r"""Every term of DDPM Eq. 5 for the images ``x0`` (in [-1, 1], on bins of ``bin_width``), one Monte Carlo sample of
    :math:`x_t \sim q(x_t\mid x_0)` per term, ``eps_model(x_t, t)`` the network's noise prediction (t a (B,) tensor).
    As improved DDPM's ``calc_bpd_loop``, but with fresh noise per timestep drawn from ``generator``."""
    T = schedule.num_timesteps
    kl = torch.empty(T - 1, x0.shape[0], dtype=torch.float64)
    decoder = None
    for index in range(T):
        t = torch.full((x0.shape[0],), index, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        x_t = q_sample(x0, t, noise, schedule.to(dtype=x0.dtype))
        e_t = eps_model(x_t, t)
        if index == 0:
            decoder = decoder_term(x0, x_t, e_t, schedule, bin_width, variance)
        else:
            kl[index - 1] = kl_term(x0, x_t, t, e_t, schedule, variance)
    return VariationalBound(prior=prior_term(x0, schedule), kl=kl, decoder=decoder, dims=x0[0].numel())


def bits_per_dim(nats_per_image: torch.Tensor, dims: int) -> torch.Tensor:
    r"""Nats per image to bits per dimension: :math:`L / (D \ln 2)`."""
    return nats_per_image / (dims * math.log(2.0))

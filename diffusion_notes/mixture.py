r"""A data distribution whose ideal denoiser is known in closed form: an isotropic Gaussian mixture.

If :math:`x_0 \sim \sum_k \pi_k \mathcal N(\mu_k, s_k^2 I)` then :math:`\bar x = x_t/\sqrt{\bar\alpha_t} = x_0 + \sigma\epsilon`
with :math:`\sigma = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}` is again a mixture,
:math:`\sum_k \pi_k \mathcal N(\mu_k, (s_k^2+\sigma^2) I)`, and Tweedie's formula gives the optimal noise predictor

.. math::
    \epsilon^*(x_t, t) = \mathbb E[\epsilon \mid x_t] = -\sigma\,\nabla_{\bar x}\log p_\sigma(\bar x)
      = \sigma \sum_k w_k(\bar x)\,\frac{\bar x - \mu_k}{s_k^2 + \sigma^2},

with :math:`w_k` the posterior responsibilities. With it there is no training error at all: what
remains when sampling is the sampler's own discretisation error, which the demo and
``notebooks/06`` measure against the exact probability-flow ODE (DDIM Eq. 14):
:math:`d\bar x / d\sigma = \epsilon^*(\bar x, \sigma)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedules import NoiseSchedule

__all__ = ["GaussianMixture", "ode_reference"]


@dataclass(frozen=True)
class GaussianMixture:
    """``weights`` (K,), ``means`` (K, D), ``stds`` (K,): an isotropic mixture in D dimensions (float64)."""

    weights: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor

    @classmethod
    def example(cls) -> "GaussianMixture":
        """A 2-D mixture of three well separated, unequal components (the demo's and tests' data)."""
        return cls(
            weights=torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
            means=torch.tensor([[-1.0, -0.5], [1.0, -0.8], [0.2, 1.2]], dtype=torch.float64),
            stds=torch.tensor([0.15, 0.25, 0.1], dtype=torch.float64),
        )

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        r""":math:`\sum_k \pi_k (s_k^2 I + \mu_k\mu_k^\top) - \mu\mu^\top`."""
        d = self.means.shape[1]
        second = sum(w * (s**2 * torch.eye(d, dtype=torch.float64) + torch.outer(m, m)) for w, m, s in zip(self.weights, self.means, self.stds))
        mu = self.mean()
        return second - torch.outer(mu, mu)

    def eps_at_sigma(self, x_bar: torch.Tensor, sigma) -> torch.Tensor:
        r"""The optimal :math:`\epsilon^*` for :math:`\bar x = x_0 + \sigma\epsilon` (batch (B, D); sigma a number or (B,))."""
        sigma = torch.as_tensor(sigma, dtype=x_bar.dtype, device=x_bar.device).reshape(-1, 1)
        var = self.stds[None, :].to(x_bar) ** 2 + sigma**2  # (B or 1, K)
        diff = x_bar[:, None, :] - self.means[None].to(x_bar)  # (B, K, D)
        d = x_bar.shape[1]
        log_w = torch.log(self.weights.to(x_bar)) - 0.5 * d * torch.log(var) - (diff**2).sum(-1) / (2 * var)
        w = torch.softmax(log_w, dim=1)
        return sigma * (w[..., None] * diff / var[..., None]).sum(1)

    def eps_model(self, schedule: NoiseSchedule):
        r"""``eps_model(x_t, t)`` for the samplers: the exact :math:`\epsilon^*` at timestep t, integer or real.

        At a fractional t the noise level is interpolated as the sampling grid does it
        (:func:`diffusion_notes.samplers.grid.t_to_sigma`: :math:`\log\sigma` linear between trained
        timesteps, k-diffusion ``t_to_sigma``), so the exact denoiser sits on every grid level exactly."""
        from .samplers.grid import t_to_sigma  # the math core's one interpolation rule

        train_sigmas = schedule.sigmas

        def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            sigma = t_to_sigma(t.to(torch.float64).cpu(), train_sigmas).to(x.device, x.dtype)
            a_t = 1 / (1 + sigma**2)
            return self.eps_at_sigma(x / a_t.sqrt()[:, None], sigma)

        return eps_model


def ode_reference(mixture: GaussianMixture, x_T: torch.Tensor, a_start: float, a_end: float, n_steps: int = 400) -> torch.Tensor:
    r"""Solve the probability-flow ODE :math:`d\bar x/d\sigma = \epsilon^*(\bar x, \sigma)` from :math:`\bar\alpha` = ``a_start``
    to ``a_end`` and return :math:`x = \sqrt{a_{end}}\,\bar x`.

    Classical 4th-order Runge-Kutta on a uniform grid in :math:`u = \sqrt\sigma`
    (:math:`d\bar x/du = 2u\,\epsilon^*`): the grid is fine where the denoiser changes fast (small
    :math:`\sigma`), and the equation stays smooth down to :math:`\sigma = 0`. Independent of every
    sampler in this package: the yardstick their discretisation error is measured against."""
    u0, u1 = ((1 - a_start) / a_start) ** 0.25, ((1 - a_end) / a_end) ** 0.25
    h = (u1 - u0) / n_steps
    x = x_T / a_start**0.5

    def f(x_bar, u):
        return 2 * u * mixture.eps_at_sigma(x_bar, u * u)

    for k in range(n_steps):
        u = u0 + k * h
        k1 = f(x, u)
        k2 = f(x + h / 2 * k1, u + h / 2)
        k3 = f(x + h / 2 * k2, u + h / 2)
        k4 = f(x + h * k3, u + h)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return a_end**0.5 * x

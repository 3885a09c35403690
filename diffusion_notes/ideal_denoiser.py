r"""The ideal denoiser of a finite training set: the exact minimiser of the training loss, which only memorises.

For training images :math:`x^{(1)}, \dots, x^{(N)}` (the empirical distribution), the noised density
:math:`q(x_t) = \frac1N\sum_i \mathcal N(x_t; \sqrt{\bar\alpha_t}x^{(i)}, (1-\bar\alpha_t)I)` is a mixture of N Gaussians,
and the posterior mean is a softmax-weighted average of the training images:

.. math::
    \mathbb E[x_0\mid x_t] = \sum_i w_i(x_t)\,x^{(i)},\qquad
    w_i \propto \exp\!\Big(-\frac{\lVert x_t - \sqrt{\bar\alpha_t}\,x^{(i)}\rVert^2}{2(1-\bar\alpha_t)}\Big).

It is the exact minimiser of :math:`L_\text{simple}` on that training set (the minimiser of a squared error is the
conditional mean; Tweedie's formula turns it into :math:`\epsilon^*`), so a network that fitted its loss perfectly would
be this function, and sampling with it returns training images (Kadkhodaie et al. 2024; smalldiffusion's
``IdealDenoiser``). That a trained network's samples are *not* copies is what generalisation means here.
"""

from __future__ import annotations

import torch

from .schedules import NoiseSchedule

__all__ = ["ideal_x0", "ideal_eps_model"]


def ideal_x0(x_t: torch.Tensor, alpha_bar: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathbb E[x_0\mid x_t]` under the empirical distribution of ``train`` (N, ...), for a batch ``x_t`` (B, ...) with
    one :math:`\bar\alpha` per element (``alpha_bar`` (B,) or a number)."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1, 1).expand(x_t.shape[0], 1)
    flat_x, flat_train = x_t.flatten(1).double(), train.flatten(1).double()
    squared = ((flat_x[:, None, :] - alpha_bar.sqrt()[:, :, None] * flat_train[None]) ** 2).sum(-1)   # (B, N)
    logits = -squared / (2 * (1 - alpha_bar))
    weights = torch.softmax(logits, dim=1)
    return (weights @ flat_train).reshape(x_t.shape).to(x_t.dtype)


def ideal_eps_model(train: torch.Tensor, schedule: NoiseSchedule):
    r"""``eps_model(x_t, t)`` of the ideal denoiser, for the samplers: :math:`\epsilon^* = (x_t - \sqrt{\bar\alpha_t}\,\mathbb E[x_0\mid x_t])/\sqrt{1-\bar\alpha_t}`
    at integer or real timesteps (real ones interpolated as the sampling grid does, like
    :meth:`~diffusion_notes.mixture.GaussianMixture.eps_model`)."""
    from .samplers.grid import t_to_sigma

    train_sigmas = schedule.sigmas

    def eps_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = t_to_sigma(torch.as_tensor(t).to(torch.float64).reshape(-1).expand(x_t.shape[0]).cpu(), train_sigmas)
        alpha_bar = 1 / (1 + sigma**2)
        x0 = ideal_x0(x_t, alpha_bar, train).double()
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        eps = (x_t.double() - alpha_bar.sqrt().reshape(shape) * x0) / (1 - alpha_bar).sqrt().reshape(shape)
        return eps.to(x_t.dtype)

    return eps_model

r"""Guidance by a gradient: classifier guidance (Dhariwal & Nichol 2021) and guidance by any differentiable loss.

Bayes' rule on the noisy marginals, :math:`p_t(x_t \mid y) \propto p_t(x_t)\,p_t(y \mid x_t)`, adds the
classifier's gradient to the score. An ε-model is a scaled score,
:math:`\epsilon(x_t) = -\sqrt{1-\bar\alpha_t}\,\nabla_{x_t}\log p_t(x_t)`, so the guided noise prediction is
(Dhariwal & Nichol 2021, Sec. 4.2 and Algorithm 2, with the classifier scale :math:`s`)

.. math::
    \hat\epsilon(x_t) = \epsilon_\theta(x_t) - s\,\sqrt{1-\bar\alpha_t}\;\nabla_{x_t}\log p_\phi(y \mid x_t).

:math:`s = 1` samples the conditional :math:`p(x \mid y)` exactly when :math:`\epsilon_\theta` and
:math:`p_\phi(y \mid x_t)` are exact (``tests/test_gradient_guidance.py`` checks this on a Gaussian
mixture, where both are known in closed form); :math:`s > 1` sharpens towards :math:`p(y \mid x)^s`.
Any sampler can then run on :math:`\hat\epsilon`.

Loss guidance replaces :math:`\log p(y \mid x_t)` by :math:`-L(\hat x_0(x_t))`, a loss on the model's
own estimate of the clean image (the "forward guidance" of Bansal et al. 2023, *Universal Guidance for
Diffusion Models*; the colour guidance of the Hugging Face diffusion course): the gradient flows
through :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(x_t))/\sqrt{\bar\alpha_t}`, the network included,

.. math::
    \hat\epsilon(x_t) = \epsilon_\theta(x_t) + s\,\sqrt{1-\bar\alpha_t}\;\nabla_{x_t} L\big(\hat x_0(x_t)\big).

Classifier-free guidance (:mod:`diffusion_notes.guidance`) needs no gradient and no classifier; these two
need both, but work with a model trained without labels.
"""

from __future__ import annotations

from typing import Callable

import torch

from .samplers.grid import t_to_sigma
from .schedules import NoiseSchedule

__all__ = ["classifier_guidance", "classifier_guided_eps_model", "loss_guided_eps_model", "alpha_cumprod_at"]


def classifier_guidance(e_t: torch.Tensor, grad_log_p: torch.Tensor, a_t, classifier_scale: float) -> torch.Tensor:
    r""":math:`\hat\epsilon = \epsilon - s\sqrt{1-\bar\alpha_t}\,\nabla_{x_t}\log p(y \mid x_t)` (Dhariwal & Nichol 2021, Algorithm 2).

    ``grad_log_p``: the classifier's gradient with respect to :math:`x_t`; ``a_t``: :math:`\bar\alpha_t`
    (a number or a tensor broadcasting against ``e_t``). guided-diffusion: ``condition_score``."""
    return e_t - classifier_scale * (1 - a_t) ** 0.5 * grad_log_p


def alpha_cumprod_at(t: torch.Tensor, schedule: NoiseSchedule, like: torch.Tensor) -> torch.Tensor:
    r""":math:`\bar\alpha` at real timesteps ``t`` (B,), shaped (B, 1, ...) like ``like``: :math:`1/(1+\sigma(t)^2)`,
    with :math:`\sigma(t)` interpolated as the sampling grid does (:func:`~diffusion_notes.samplers.grid.t_to_sigma`)."""
    sigma = t_to_sigma(t.detach().to(torch.float64).cpu(), schedule.sigmas)
    return (1 / (1 + sigma**2)).to(like.device, like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def classifier_guided_eps_model(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    log_prob: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    classifier_scale: float,
    schedule: NoiseSchedule,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    r"""Wrap ``eps_model(x, t)`` into the classifier-guided :math:`\hat\epsilon` (:func:`classifier_guidance`).

    ``log_prob(x_t, t)`` returns :math:`\log p_\phi(y \mid x_t)` per sample, shape (B,), for the wanted labels
    (fixed inside it); its gradient is taken by autograd, also when the caller runs under ``torch.no_grad``.
    The model itself is not differentiated. guided-diffusion: ``cond_fn`` + ``condition_score``."""

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e_t = eps_model(x, t)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            grad_log_p = torch.autograd.grad(log_prob(x_in, t).sum(), x_in)[0]
        return classifier_guidance(e_t, grad_log_p, alpha_cumprod_at(t, schedule, x), classifier_scale)

    return guided


def loss_guided_eps_model(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    loss: Callable[[torch.Tensor], torch.Tensor],
    loss_scale: float | Callable[[torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    r"""Wrap ``eps_model(x, t)`` (an ε-model) into the loss-guided
    :math:`\hat\epsilon = \epsilon + s\sqrt{1-\bar\alpha_t}\,\nabla_{x_t}L(\hat x_0(x_t))`.

    ``loss(pred_x0)`` returns one loss per sample, shape (B,); the gradient passes through the model
    (one backward pass per step). :func:`classifier_guidance` with :math:`\log p := -L`.
    ``loss_scale``: the number :math:`s`, or a function of :math:`\bar\alpha_t` (a (B, 1, ...) tensor) giving a
    time-dependent :math:`s(t)` as Bansal et al. use: through :math:`\hat x_0 \approx x_t/\sqrt{\bar\alpha_t}` the
    gradient grows like :math:`1/\sqrt{\bar\alpha_t}` at high noise, where a constant :math:`s` can blow the sample up."""

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a_t = alpha_cumprod_at(t, schedule, x)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            e_t = eps_model(x_in, t)
            pred_x0 = (x_in - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
            grad_loss = torch.autograd.grad(loss(pred_x0).sum(), x_in)[0]
        scale = loss_scale(a_t) if callable(loss_scale) else loss_scale
        return classifier_guidance(e_t.detach(), -grad_loss, a_t, scale)

    return guided

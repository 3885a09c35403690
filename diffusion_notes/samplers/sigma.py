r"""The σ view of a discrete diffusion (Karras et al. 2022, "EDM"): the formulas every σ sampler shares.

Divide :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon` by :math:`\sqrt{\bar\alpha_t}`:

.. math::
    \bar x = \frac{x_t}{\sqrt{\bar\alpha_t}} = x_0 + \sigma\,\epsilon,\qquad \sigma = \sqrt{\frac{1-\bar\alpha_t}{\bar\alpha_t}},

a variance-*exploding* process whose only parameter is the noise level σ. Its probability-flow ODE
(DDIM Eq. 14, Karras Eq. 4 with :math:`s(t) = 1`, :math:`\sigma(t) = t`) is

.. math::
    \frac{d\bar x}{d\sigma} = \epsilon_\theta(\bar x, \sigma) = \frac{\bar x - D(\bar x; \sigma)}{\sigma},

with the *denoiser* :math:`D(\bar x; \sigma) = \hat x_0`. An ε-network becomes a denoiser by EDM's
preconditioning (Table 1, the VP column; k-diffusion ``DiscreteEpsDDPMDenoiser``):
:math:`D(\bar x; \sigma) = c_{skip}\,\bar x + c_{out}\,\epsilon_\theta(c_{in}\,\bar x, t(\sigma))` with
:math:`c_{skip} = 1,\ c_{out} = -\sigma,\ c_{in} = 1/\sqrt{\sigma^2 + 1}` (and :math:`c_{in}\bar x = x_t`, the UNet's input).

The samplers keep their state :math:`x` in the variance-preserving scale (what the callback, image-to-image
and inpainting see) and step in :math:`\bar x`; :func:`x_bar` and :func:`x_vp` convert at each level.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["edm_scalings", "x_bar", "x_vp", "denoise", "to_d", "ancestral_step"]


def edm_scalings(sigma: float) -> tuple[float, float, float]:
    r""":math:`(c_{skip}, c_{out}, c_{in}) = (1, -\sigma, 1/\sqrt{\sigma^2+1})` for an ε-prediction network (EDM Table 1, VP).

    k-diffusion: ``DiscreteEpsDDPMDenoiser.get_scalings``; diffusers: ``scale_model_input`` divides by
    :math:`\sqrt{\sigma^2+1}`, ``pred_original_sample = sample - sigma * model_output``."""
    return 1.0, -sigma, 1.0 / math.sqrt(sigma**2 + 1.0)


def x_bar(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r""":math:`\bar x = x_t/\sqrt{\bar\alpha} = \sqrt{\sigma^2+1}\,x_t` (diffusers: ``latents * init_noise_sigma`` at the start)."""
    return x * math.sqrt(sigma**2 + 1.0)


def x_vp(x_bar_: torch.Tensor, sigma: float) -> torch.Tensor:
    r""":math:`x_t = c_{in}\,\bar x = \bar x/\sqrt{\sigma^2+1}` (diffusers ``scale_model_input``)."""
    return x_bar_ / math.sqrt(sigma**2 + 1.0)


def denoise(model: Callable, x_bar_: torch.Tensor, sigma: float, t: float) -> torch.Tensor:
    r""":math:`D(\bar x; \sigma) = c_{skip}\bar x + c_{out}\,\epsilon_\theta(c_{in}\bar x, t) = \bar x - \sigma\,\epsilon_\theta(x_t, t)`.

    ``model(x_t, t)`` is the ε-prediction at the real timestep ``t`` of level σ. k-diffusion: the ``model``
    (a ``CompVisDenoiser``) of every ``sample_*``; diffusers: ``pred_original_sample``."""
    c_skip, c_out, c_in = edm_scalings(sigma)
    return c_skip * x_bar_ + c_out * model(c_in * x_bar_, t)


def to_d(x_bar_: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    r"""The ODE's slope :math:`d\bar x/d\sigma = (\bar x - D(\bar x;\sigma))/\sigma` (Karras Eq. 3 with :math:`\sigma(t) = t`;
    it equals :math:`\hat\epsilon`). k-diffusion: ``to_d``; diffusers: ``derivative`` in ``EulerDiscreteScheduler.step``."""
    return (x_bar_ - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    r"""Split the step :math:`\sigma_{from} \to \sigma_{to}` of an ancestral sampler into a deterministic part down to
    :math:`\sigma_{down}` and fresh noise of size :math:`\sigma_{up}`:

    .. math::
        \sigma_{up} = \min\Big(\sigma_{to},\ \eta\sqrt{\frac{\sigma_{to}^2(\sigma_{from}^2 - \sigma_{to}^2)}{\sigma_{from}^2}}\Big),
        \qquad \sigma_{down} = \sqrt{\sigma_{to}^2 - \sigma_{up}^2},

    so that :math:`\sigma_{down}^2 + \sigma_{up}^2 = \sigma_{to}^2`; with :math:`\eta = 1` it is the DDPM posterior's
    noise (DDIM Eq. 16 with :math:`\eta = 1`, in σ). Returns ``(sigma_down, sigma_up)``.
    k-diffusion: ``get_ancestral_step``; diffusers: ``sigma_up``/``sigma_down`` in ``EulerAncestralDiscreteScheduler.step``."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    sigma_down = math.sqrt(sigma_to**2 - sigma_up**2)
    return sigma_down, sigma_up

r"""DDIM (Song, Meng & Ermon 2021): the seed's ``get_x_prev_and_pred_x0``.

With :math:`a_t = \bar\alpha_t` and :math:`a_{prev} = \bar\alpha_{prev}` (the previous *visited* step),
DDIM Eq. 12 is

.. math::
    x_{prev} = \sqrt{a_{prev}}\;\underbrace{\frac{x_t - \sqrt{1-a_t}\,e_t}{\sqrt{a_t}}}_{\text{pred\_x0}}
             + \underbrace{\sqrt{1 - a_{prev} - \sigma_t^2}\;e_t}_{\text{dir\_xt}}
             + \underbrace{\sigma_t\,z}_{\text{noise}},\qquad z \sim \mathcal N(0, I)

and Eq. 16 sets :math:`\sigma_t = \eta\sqrt{\frac{1-a_{prev}}{1-a_t}}\sqrt{1-\frac{a_t}{a_{prev}}}`:
:math:`\eta = 0` is the deterministic DDIM, :math:`\eta = 1` the DDPM posterior variance.
"""

from __future__ import annotations

import torch

from .registry import Step, register

__all__ = ["ddim_sigma", "ddim_step", "sample_ddim"]


def ddim_sigma(a_t, a_prev, eta: float):
    r"""DDIM Eq. 16: :math:`\sigma_t(\eta) = \eta\sqrt{(1-a_{prev})/(1-a_t)}\sqrt{1-a_t/a_{prev}}`.

    CompVis: ``ddim_sigmas`` in ``make_ddim_sampling_parameters``; diffusers: ``std_dev_t = eta * variance ** 0.5``."""
    return eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5


def ddim_step(x: torch.Tensor, e_t: torch.Tensor, a_t, a_prev, sigma_t=0.0, noise: torch.Tensor | None = None):
    r"""One DDIM update, DDIM Eq. 12; returns ``(x_prev, pred_x0)``.

    ``a_t``, ``a_prev``, ``sigma_t`` are numbers (or tensors broadcastable against ``x``); ``noise``
    is :math:`z \sim \mathcal N(0, I)`, needed only when ``sigma_t > 0``.
    CompVis: ``get_x_prev_and_pred_x0`` inside ``p_sample_ddim`` / ``p_sample_plms``;
    diffusers: ``DDIMScheduler.step`` (``pred_original_sample``, ``pred_sample_direction``, ``prev_sample``).
    """
    pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
    dir_xt = (1 - a_prev - sigma_t**2) ** 0.5 * e_t
    x_prev = a_prev**0.5 * pred_x0 + dir_xt
    if noise is not None:
        x_prev = x_prev + sigma_t * noise
    return x_prev, pred_x0


@register("ddim", "DDIM", "DDIM Eq. 12: deterministic for eta = 0, DDPM-like noise for eta = 1", options={"eta": 0.0})
def sample_ddim(model, x, grid, noise, eta: float = 0.0):
    r"""DDIM over the grid: :func:`ddim_step` from level i to i + 1, :math:`\sigma_t` from Eq. 16 with ``eta``.

    CompVis: ``DDIMSampler.ddim_sampling``; diffusers: ``DDIMScheduler``."""
    for i in range(grid.num_steps):
        t, a_t, a_prev = float(grid.timesteps[i]), float(grid.alphas_cumprod[i]), float(grid.alphas_cumprod[i + 1])
        sigma_t = float(ddim_sigma(grid.alphas_cumprod[i], grid.alphas_cumprod[i + 1], eta))
        z = noise() if eta > 0 else None
        x, pred_x0 = ddim_step(x, model(x, t), a_t, a_prev, sigma_t, z)
        yield Step(i, t, float(grid.sigmas[i]), x, pred_x0)

r"""DDPM ancestral sampling (Ho, Jain & Abbeel 2020, Algorithm 2), written for any pair of visited steps.

With consecutive steps (``a_prev`` = :math:`\bar\alpha_{t-1}`) this is exactly the paper's update: sample
the posterior :math:`q(x_{t-1} | x_t, x_0 = \hat x_0)` of Eq. 6-7. With skipped steps the same formulas
hold with the step's own :math:`\beta = 1 - a_t / a_{prev}` (diffusers' ``current_beta_t``).
"""

from __future__ import annotations

import torch

from .registry import Step, register

__all__ = ["ddpm_step", "DDPM_VARIANCES", "sample_ddpm"]

#: DDPM Sec. 3.2: both choices of :math:`\sigma_t^2` "had similar results".
DDPM_VARIANCES = ("posterior", "beta")


def ddpm_step(
    x: torch.Tensor,
    e_t: torch.Tensor,
    a_t,
    a_prev,
    noise: torch.Tensor | None = None,
    variance: str = "posterior",
    clip_denoised: bool = False,
):
    r"""One ancestral step; returns ``(x_prev, pred_x0)``.

    :math:`\hat x_0 = (x_t - \sqrt{1-a_t}\,e_t)/\sqrt{a_t}` (optionally clipped to [-1, 1], as CompVis's
    ``clip_denoised`` does for pixel-space models), then DDPM Eq. 7:

    .. math::
        \tilde\mu = \frac{\sqrt{a_{prev}}\,\beta}{1-a_t}\hat x_0 + \frac{\sqrt{1-\beta}\,(1-a_{prev})}{1-a_t}x_t,\quad
        \beta = 1 - \frac{a_t}{a_{prev}},

    and :math:`x_{prev} = \tilde\mu + \sigma z` with :math:`\sigma^2 = \tilde\beta = \frac{1-a_{prev}}{1-a_t}\beta`
    (``variance="posterior"``, CompVis ``fixed_small``) or :math:`\sigma^2 = \beta` (``"beta"``, ``fixed_large``).
    Pass ``noise=None`` at the last step (Algorithm 2: :math:`z = 0` when t = 1).

    CompVis: ``DDPM.p_sample`` (via ``p_mean_variance`` and ``q_posterior``); diffusers: ``DDPMScheduler.step``.
    """
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"variance must be one of {DDPM_VARIANCES}, not {variance!r}")
    pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
    if clip_denoised:
        pred_x0 = pred_x0.clamp(-1.0, 1.0)
    beta = 1 - a_t / a_prev
    posterior_mean = (a_prev**0.5 * beta / (1 - a_t)) * pred_x0 + ((1 - beta) ** 0.5 * (1 - a_prev) / (1 - a_t)) * x
    if noise is None:
        return posterior_mean, pred_x0
    sigma_sq = beta * (1 - a_prev) / (1 - a_t) if variance == "posterior" else beta
    return posterior_mean + sigma_sq**0.5 * noise, pred_x0


@register("ddpm", "DDPM", "DDPM Alg. 2: ancestral sampling from the posterior q(x_prev given x_t and x0_hat)",
          options={"ddpm_variance": "posterior", "clip_denoised": False}, stochastic=True,
          grid_defaults={"spacing": "leading", "steps_offset": 0, "set_alpha_to_one": True},
          choices={"ddpm_variance": DDPM_VARIANCES})
def sample_ddpm(model, x, grid, noise, ddpm_variance: str = "posterior", clip_denoised: bool = False):
    """Ancestral steps over the grid; no noise at the last step (Alg. 2: z = 0 when t = 1).

    The default grid is every timestep T-1..0 for ``steps = T`` (leading spacing, ``steps_offset = 0``)
    ending at :math:`\bar\alpha = 1`. CompVis: ``DDPM.p_sample_loop``; diffusers: ``DDPMScheduler``."""
    for i in range(grid.num_steps):
        t, a_t, a_prev = float(grid.timesteps[i]), float(grid.alphas_cumprod[i]), float(grid.alphas_cumprod[i + 1])
        z = noise() if i + 1 < grid.num_steps else None
        x, pred_x0 = ddpm_step(x, model(x, t), a_t, a_prev, z, ddpm_variance, clip_denoised)
        yield Step(i, t, float(grid.sigmas[i]), x, pred_x0)

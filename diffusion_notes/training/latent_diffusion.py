r"""The latent diffusion training objective, LDM (Rombach et al. 2022) Eq. 2 and Eq. 3.

.. math:: L_\text{LDM} = \mathbb E_{\mathcal E(x),\,y,\,\epsilon\sim\mathcal N(0,1),\,t}
          \Big[\big\|\epsilon - \epsilon_\theta\big(z_t, t, \tau_\theta(y)\big)\big\|_2^2\Big]

Eq. 2 is DDPM's :math:`L_\text{simple}` on latents :math:`z_0 = \mathcal E(x)` (times the scale
factor); Eq. 3 adds the conditioning :math:`\tau_\theta(y)`, optimised jointly with the UNet. The
pieces are the package's own: the frozen encoder (``vae.encode``), ``scale_factor``, ``q_sample``
(DDPM Eq. 4) and the loss of :func:`diffusion_notes.losses.p_losses`. CompVis:
``LatentDiffusion.shared_step`` -> ``get_input`` (encode, scale) -> ``p_losses``.
"""

from __future__ import annotations

import torch

from ..losses import p_losses

__all__ = ["encode_latents", "latent_diffusion_loss"]


@torch.no_grad()
def encode_latents(sd, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    r""":math:`z_0 = s\cdot z,\ z\sim q(z|x) = \mathcal E(x)`: images in [-1, 1] -> the diffusion model's latents
    (CompVis ``get_first_stage_encoding(encode_first_stage(x))``; the autoencoder is frozen here)."""
    return sd.scale_factor * sd.vae.encode(images.to(sd.dtype)).sample(generator).float()


def latent_diffusion_loss(sd, z0: torch.Tensor, captions: list[str], generator: torch.Generator | None = None,
                          t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    r"""LDM Eq. 3: :math:`\|\epsilon - \epsilon_\theta(z_t, t, \tau_\theta(y))\|^2`, averaged over elements.

    ``z0``: latents from :func:`encode_latents`; ``captions``: one per latent (``""`` for the
    unconditional model of classifier-free guidance). :math:`t \sim \mathcal U\{0..T-1\}` and
    :math:`\epsilon\sim\mathcal N(0, I)` are drawn from ``generator`` unless given. Gradients flow into
    the UNet and, through ``prompt_encoder.encode``, into the text encoder :math:`\tau_\theta`.
    The target is :math:`\epsilon` or :math:`v` per ``sd.prediction_type``.
    """
    if t is None:
        t = torch.randint(0, sd.schedule.num_timesteps, (z0.shape[0],), generator=generator)
    if noise is None:
        noise = torch.randn(z0.shape, generator=generator)
    context, _ = sd.prompt_encoder.encode(captions)
    return p_losses(sd.unet, z0, t.to(z0.device), sd.schedule, noise=noise.to(z0.device),
                    parameterization=sd.prediction_type, context=context)

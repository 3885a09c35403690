r"""Training the first stage: the KL-regularised autoencoder and its latent scale factor.

LDM (Rombach et al. 2022, Sec. 3.1 and App. G) trains :math:`\mathcal E, \mathcal D` with a
reconstruction loss, a perceptual (LPIPS) and a patch-adversarial term, and a slight KL penalty
towards :math:`\mathcal N(0, I)` ("KL-reg", weight :math:`10^{-6}`). The miniature keeps the
reconstruction and the KL terms only (LPIPS needs a pretrained VGG, which a from-scratch, offline
recipe does not have); CompVis's ``LPIPSWithDiscriminator`` with ``perceptual_weight=0`` and the
discriminator off computes the same thing.

Because the KL weight is tiny, the latents' scale is whatever the encoder found convenient, so the
diffusion model works on ``scale_factor * z`` with ``scale_factor = 1 / std(z)`` measured on the
training data (CompVis ``LatentDiffusion`` with ``scale_by_std=True``; SD 1.x's 0.18215 was measured
this way on its own VAE).
"""

from __future__ import annotations

import torch

__all__ = ["vae_loss", "measure_scale_factor"]


def vae_loss(vae, x: torch.Tensor, kl_weight: float = 1e-6, generator: torch.Generator | None = None):
    r"""``(loss, reconstruction, kl)`` of the KL-regularised autoencoder on images ``x`` in [-1, 1].

    .. math:: \mathcal L = \frac1B\sum_b \Big(\big\|x_b - \mathcal D(z_b)\big\|_1
              + w_\text{KL}\,\mathrm{KL}\big(q(z|x_b)\,\|\,\mathcal N(0, I)\big)\Big),
              \qquad z_b = \mu_b + \sigma_b\odot\epsilon \sim q(z|x_b)

    with the L1 norm summed over pixels and the KL over latent elements (both per image, then averaged
    over the batch: CompVis ``LPIPSWithDiscriminator.forward``'s ``nll_loss`` with ``logvar = 0`` and
    ``kl_loss``). ``reconstruction`` and ``kl`` are returned per image, detached, for logging.
    """
    posterior = vae.encode(x)
    reconstruction = vae.decode(posterior.sample(generator))
    rec = (x - reconstruction).abs().sum(dim=[1, 2, 3]).mean()
    kl = posterior.kl().mean()
    return rec + kl_weight * kl, rec.detach(), kl.detach()


@torch.no_grad()
def measure_scale_factor(vae, images: torch.Tensor, batch_size: int = 256,
                         generator: torch.Generator | None = None) -> float:
    r"""``1 / std(z)`` over latents :math:`z \sim q(z|x)` of ``images``: the factor that gives the diffusion
    model unit-variance inputs (CompVis ``LatentDiffusion.on_train_batch_start`` with ``scale_by_std``,
    which measures it on the first batch; here on all of ``images``). Sampled, not the mean, as CompVis
    (``get_first_stage_encoding`` samples the posterior)."""
    latents = [vae.encode(images[i : i + batch_size]).sample(generator).float()
               for i in range(0, images.shape[0], batch_size)]
    return float(1.0 / torch.cat(latents).flatten().std())

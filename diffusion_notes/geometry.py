r"""A model's geometry: what the settings are checked against, from a loaded model or from a file's header.

The pixels-per-latent factor of the VAE (8 for every Stable Diffusion release), the latent channels
(4), the VAE's first channel count (for the memory estimate), the size the model was trained at, the
training schedule's :math:`\bar\alpha_t` (its length bounds the number of steps), whether its UNet is
an inpainting one (9 input channels: latents, mask, masked-image latents), and the device.
:meth:`diffusion_notes.settings.Request.check_against` reads only this object, so the command line
can refuse an impossible size from the file's header before the (slow) load, and the pipeline checks
the same rule once more against the loaded model. What a header cannot tell is None and left for
the check after loading.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ModelGeometry", "default_size", "vae_factor", "is_inpainting_model"]


@dataclass(frozen=True)
class ModelGeometry:
    """See the module docstring; None: not known (yet)."""

    vae_factor: int | None = None
    vae_channels: int | None = None
    latent_channels: int | None = None
    default_size: tuple[int, int] | None = None
    alphas_cumprod: torch.Tensor | None = None
    inpainting: bool | None = None
    device: torch.device = torch.device("cpu")

    @classmethod
    def of_model(cls, sd) -> "ModelGeometry":
        """The geometry of a loaded :class:`~diffusion_notes.stable_diffusion.StableDiffusion`."""
        return cls(vae_factor(sd), sd.config.vae.ch, sd.config.unet.out_channels, default_size(sd),
                   sd.schedule.alphas_cumprod, is_inpainting_model(sd), sd.device)

    @classmethod
    def of_file(cls, source, device=None) -> "ModelGeometry":
        """What the header of a safetensors single file or a diffusers folder tells about the VAE
        (:func:`diffusion_notes.checkpoints.peek.peek_vae`); nothing for a pickle ``.ckpt``."""
        from .checkpoints.peek import peek_vae

        vae = peek_vae(source)
        device = torch.device(device) if device is not None else torch.device("cpu")
        return cls(vae.factor, vae.channels, device=device) if vae else cls(device=device)


def default_size(sd) -> tuple[int, int]:
    """(height, width) the model was trained at: its own record (``config.native_size``, e.g. 32x32 for the
    shipped miniature) when it has one, else its family's release: SD 1.x and 2.x-base 512, SD 2.x-768 (v)
    768, SDXL 1024."""
    native = getattr(sd.config, "native_size", None)
    if native:
        return tuple(native)
    if sd.family == "sdxl":
        return 1024, 1024
    if sd.family == "sd2" and sd.prediction_type == "v":
        return 768, 768
    return 512, 512


def vae_factor(sd) -> int:
    """Pixels per latent pixel: 2 per autoencoder level below the top (8 for every released SD). Image
    sides must be multiples of it; the UNet resizes each upsampling to its skip connection's size, as
    diffusers does, so odd latent sides are fine (CompVis's UNet always doubles and would need 64)."""
    return 2 ** (len(sd.config.vae.ch_mult) - 1)


def is_inpainting_model(sd) -> bool:
    """Inpainting checkpoints read 9 channels: 4 latents, 1 mask, 4 masked-image latents."""
    return sd.config.unet.in_channels == sd.config.unet.out_channels + 5

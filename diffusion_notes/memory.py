r"""Memory options at work, and the memory a generation needs at least.

:class:`~diffusion_notes.settings.MemoryOptions` says what to do; this module does it. Every option is
applied inside :func:`memory_context` and undone when it ends, so a call never changes the model it
was given: the attention softmax upcast, the channels-last convolution weights
(:func:`diffusion_notes.models.prepacked.convolutions_channels_last`, which leaves prepacked
convolutions alone: they always run channels-last) and the text encoder moved to the CPU. VAE
slicing and tiling act in :mod:`diffusion_notes.decoding`.

:func:`check_fits_in_memory` refuses, before anything runs, a size whose lower bound already exceeds
the device's memory: such a size would only fail after minutes, or swap the machine to a halt.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

import torch

from .errors import SettingsError
from .models.prepacked import convolutions_channels_last

if TYPE_CHECKING:  # the settings import this module to check a request; no import back at run time
    from .settings import ImageSize, MemoryOptions

__all__ = ["memory_context", "channels_last", "latent_memory_bytes", "available_memory_bytes",
           "check_fits_in_memory"]


@contextlib.contextmanager
def _attention_upcast(sd, enabled: bool):
    """Temporarily compute every attention softmax of the UNet in float32."""
    layers = [m for m in sd.unet.modules() if hasattr(m, "upcast_attention")] if enabled else []
    before = [m.upcast_attention for m in layers]
    for m in layers:
        m.upcast_attention = True
    try:
        yield
    finally:
        for m, value in zip(layers, before):
            m.upcast_attention = value


@contextlib.contextmanager
def channels_last(network: torch.nn.Module, enabled: bool):
    """Temporarily store the plain convolution weights of ``network`` NHWC (faster on CUDA); prepacked
    convolutions run channels-last already and are not touched."""
    changed = convolutions_channels_last(network, True) if enabled else []
    try:
        yield
    finally:
        for conv in changed:
            conv.to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def _text_encoder_offload(sd, enabled: bool):
    """Temporarily run the text encoder(s) on the CPU in float32 (CPUs are slow at fp16, and the text
    encoder runs once per prompt, not once per step); put back on their device and dtype afterwards."""
    if not enabled:
        yield
        return
    first = next(sd.prompt_encoder.parameters())
    device, dtype = first.device, first.dtype
    sd.prompt_encoder.to("cpu", torch.float32)
    try:
        yield
    finally:
        sd.prompt_encoder.to(device, dtype)


@contextlib.contextmanager
def memory_context(sd, memory: MemoryOptions):
    """The UNet-side options of ``memory`` in force inside the block, undone afterwards."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_attention_upcast(sd, memory.upcast_attention))
        stack.enter_context(channels_last(sd.unet, memory.uses_channels_last(sd.device)))
        stack.enter_context(_text_encoder_offload(sd, memory.offload_text_encoder))
        yield


def latent_memory_bytes(batch: int, height: int, width: int, multiple: int, latent_channels: int = 4,
                        vae_channels: int = 128) -> int:
    """A lower bound on the memory one generation needs, in bytes (float32 activations).

    The decoder's last block holds ``vae_channels`` full-resolution feature maps (128 for every SD
    VAE) of the whole batch at once, beside the decoded image itself; the latents and the UNet's
    activations come on top. (With VAE slicing it is one image at a time, with tiling one tile.)
    """
    pixels = height * width
    return 4 * batch * (pixels * (vae_channels + 3) + latent_channels * pixels // (multiple * multiple))


def available_memory_bytes(device=None) -> int | None:
    """The total memory of ``device`` (a CUDA GPU's, else the machine's RAM), or None when unknown."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(size: ImageSize, batch: int, multiple: int, device=None, vae_channels: int = 128,
                         memory: MemoryOptions | None = None) -> None:
    """SettingsError (``height``) when even the lower bound of :func:`latent_memory_bytes` exceeds the
    device's total memory."""
    slicing, tiling = (memory.vae_slicing, memory.vae_tiling) if memory is not None else (False, False)
    decoded_batch = 1 if slicing or tiling else batch
    needed = latent_memory_bytes(decoded_batch, size.height, size.width, multiple, vae_channels=vae_channels)
    if tiling:  # the decoder then holds one tile, but the output image is still whole
        tile = memory.tile_size * multiple
        needed = latent_memory_bytes(1, min(size.height, tile), min(size.width, tile), multiple,
                                     vae_channels=vae_channels) + 4 * 3 * batch * size.height * size.width
    total = available_memory_bytes(device)
    if total is not None and needed > total:
        raise SettingsError("height", f"{size.height}x{size.width} pixels (height x width) for {batch} image(s) needs "
                            f"at least {needed / 2**30:.1f} GiB, more than the {total / 2**30:.1f} GiB this device has; "
                            "choose a smaller height and width (or fewer images)")

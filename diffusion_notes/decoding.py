r"""The autoencoder at both ends of a generation: latents to pixels (decode) and pixels to latents (encode).

:math:`x = \mathcal D(z_0 / s)` and :math:`z = s \cdot z'`, :math:`z' \sim q(z|x)` with the model's
``scale_factor`` :math:`s` (0.18215 for SD 1.x/2.x, 0.13025 for SDXL; Rombach et al. 2022, Sec. 4.3.2
and App. G). Both run in the VAE's dtype and are repeated in float32 when fp16/bf16 overflows
(:func:`decode_checked`). VAE slicing (one image at a time) and tiling (overlapping tiles blended with
linear ramps, :func:`decode_tiled`) are the ways :class:`~diffusion_notes.settings.MemoryOptions`
bound the decoder's memory.

Counterparts: CompVis ``decode_first_stage`` / ``get_first_stage_encoding(encode_first_stage(x))``;
diffusers ``vae.decode(latents / scaling_factor)``, ``enable_vae_slicing``, ``enable_vae_tiling``,
``latent_dist.sample(generator) * scaling_factor``.
"""

from __future__ import annotations

import warnings

import torch

from .geometry import vae_factor
from .memory import channels_last
from .settings import MemoryOptions, check_tiles

__all__ = ["decode", "decode_checked", "decode_tiled", "encode_image", "NonFiniteDecodeWarning"]


class NonFiniteDecodeWarning(UserWarning):
    """The VAE produced inf/NaN in fp16/bf16 and the decode was repeated in float32."""


def decode(sd, latents: torch.Tensor, memory: MemoryOptions | None = None) -> torch.Tensor:
    """Diffusion latents -> ``(B, 3, H, W)`` float32 images in [-1, 1]: ``VAE.decode(latents / scale_factor)``.

    With ``memory.vae_slicing`` one image at a time, with ``memory.vae_tiling`` tile by tile; every decode
    goes through :func:`decode_checked` (re-run in float32 if fp16/bf16 overflowed).
    """
    memory = memory or MemoryOptions()
    z = latents.float() / sd.scale_factor

    def decode_batch(z_batch):
        if memory.vae_tiling:
            return decode_tiled(sd, z_batch, memory.tile_size, memory.tile_overlap)
        return decode_checked(sd, z_batch)

    with torch.no_grad(), channels_last(sd.vae, memory.uses_channels_last(sd.device)):
        if memory.vae_slicing:
            return torch.cat([decode_batch(z[i : i + 1]) for i in range(z.shape[0])])
        return decode_batch(z)


def decode_checked(sd, z: torch.Tensor) -> torch.Tensor:
    """``sd.vae.decode(z)`` (unscaled ``z``) in the VAE's dtype; if that gives inf/NaN, again in float32.

    The SDXL VAE's activations exceed fp16's 65504 and decode to NaN/black images (diffusers keeps it in
    float32 with ``force_upcast``; the fp16-fix VAE rescales its weights). Only the failing decode pays.
    """
    return _with_float32_retry(sd, lambda vae_dtype: sd.vae.decode(z.to(sd.device, vae_dtype)).float(), "decode")


def _with_float32_retry(sd, run, what: str) -> torch.Tensor:
    """``run(vae_dtype)``; if the result has inf/NaN in fp16/bf16, warn and ``run(torch.float32)`` with the VAE upcast."""
    vae_dtype = next(sd.vae.parameters()).dtype
    result = run(vae_dtype)
    if vae_dtype == torch.float32 or torch.isfinite(result).all():
        return result
    warnings.warn(f"the VAE {what} in {str(vae_dtype).removeprefix('torch.')} gave inf/NaN (activations overflowed); "
                  f"running the {what} again in float32. Load the model in float32, or use an fp16-safe VAE, to skip this.",
                  NonFiniteDecodeWarning, stacklevel=3)
    sd.vae.float()
    try:
        return run(torch.float32)
    finally:
        sd.vae.to(vae_dtype)


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: stride ``tile - overlap``, the last tile flush with the edge."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]


def _ramp(length: int, fade: int) -> torch.Tensor:
    """1-D blending weights: rising linearly over ``fade`` pixels at both ends, 1 in between, never 0."""
    x = torch.arange(length, dtype=torch.float32) + 0.5
    return torch.minimum(torch.ones(length), torch.minimum(x, length - x) / max(fade, 1))


def decode_tiled(sd, z: torch.Tensor, tile: int = 64, overlap: int = 16) -> torch.Tensor:
    """Decode ``tile`` x ``tile`` latent tiles that overlap by ``overlap`` and average them with linear ramps.

    Memory grows with the tile, not the image. The decoder sees each tile without its surroundings, so
    pixels near seams (and the mid-block attention, which is global) differ from a full decode; where a
    single tile covers everything the result is the full decode exactly.
    """
    tile, overlap = check_tiles(tile, overlap)
    f = vae_factor(sd)
    batch, _, h, w = z.shape
    out = torch.zeros(batch, 3, h * f, w * f, device=z.device)
    weight = torch.zeros(1, 1, h * f, w * f, device=z.device)
    for top in _tile_starts(h, tile, overlap):
        for left in _tile_starts(w, tile, overlap):
            piece = decode_checked(sd, z[:, :, top : top + tile, left : left + tile])
            ph, pw = piece.shape[-2:]
            ramp = (_ramp(ph, overlap * f)[:, None] * _ramp(pw, overlap * f)[None, :]).to(z.device)
            rows, cols = slice(top * f, top * f + ph), slice(left * f, left * f + pw)
            out[:, :, rows, cols] += piece.to(out.device) * ramp
            weight[:, :, rows, cols] += ramp
    return out / weight


def encode_image(sd, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    r"""Image in [-1, 1] -> ``scale_factor * z`` with :math:`z \sim q(z|x)`, the noise drawn from ``generator``
    on its own device (CompVis ``get_first_stage_encoding(encode_first_stage(x))``; diffusers
    ``latent_dist.sample(generator) * scaling_factor``)."""
    state = generator.get_state()

    def encode(vae_dtype):
        generator.set_state(state)  # a float32 retry draws the very same noise
        with torch.no_grad():
            posterior = sd.vae.encode(image.to(sd.device, vae_dtype))
            return sd.scale_factor * posterior.sample(generator).float()

    return _with_float32_retry(sd, encode, "encode")

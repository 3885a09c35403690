"""The VAE decode: slicing and tiling against the full decode, and the float32 fallback on inf/NaN.

Stated tolerances (images in [-1, 1]):

* slicing decodes the same numbers one image at a time: within 1e-5 of the full decode;
* tiling with a decoder that looks at one latent pixel at a time is exact (1e-6): tiles are placed
  and blended correctly;
* tiling with the tiny VAE: exact when one tile covers the latents; with 16x16 tiles overlapping by 8
  on 24x24 latents, mean |difference| < 0.05 and max < 0.4. The real decoder is not local: GroupNorm
  statistics and the mid-block attention see only the tile (measured here: mean 0.024, max 0.19).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from diffusion_notes.pipeline import MemoryOptions, NonFiniteDecodeWarning, decode, decode_tiled
from diffusion_notes.stable_diffusion import StableDiffusion


def _latents(batch=2, size=24, seed=0):
    return torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))


def test_slicing_equals_the_full_decode(ours):
    sd, z = ours("sd1"), _latents()
    assert (decode(sd, z, MemoryOptions(vae_slicing=True)) - decode(sd, z)).abs().max() < 1e-5


class _PixelwiseDecoder(torch.nn.Module):
    """A stand-in VAE whose every output pixel depends on one latent pixel: tiling must be exact for it."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, 4))

    def decode(self, z):
        return torch.tanh(F.interpolate(torch.einsum("oc,bchw->bohw", self.weight, z), scale_factor=2))


def test_tiles_are_placed_and_blended_exactly():
    sd = SimpleNamespace(vae=_PixelwiseDecoder(), device=torch.device("cpu"), config=SimpleNamespace(
        vae=SimpleNamespace(ch_mult=(1, 2))))
    z = _latents(size=21)  # not a whole number of tiles: the last tile sits flush with the edge
    with torch.no_grad():
        assert (decode_tiled(sd, z, tile=8, overlap=3) - sd.vae.decode(z)).abs().max() < 1e-6


def test_tiled_decode_of_the_tiny_vae_is_close_to_the_full_decode(ours):
    sd, z = ours("sd1"), _latents()
    full = decode(sd, z)
    assert (decode(sd, z, MemoryOptions(vae_tiling=True, tile_size=24, tile_overlap=8)) - full).abs().max() < 1e-6
    difference = (decode(sd, z, MemoryOptions(vae_tiling=True, tile_size=16, tile_overlap=8)) - full).abs()
    assert difference.mean() < 0.05 and difference.max() < 0.4


def test_tile_overlap_must_be_smaller_than_the_tile(ours):
    with pytest.raises(ValueError, match="overlap"):
        decode(ours("sd1"), _latents(), MemoryOptions(vae_tiling=True, tile_size=8, tile_overlap=8))


def _overflow_in_low_precision(module, inputs, output):
    """Simulates the SDXL VAE in fp16: fine in float32, inf in the low-precision path."""
    return output if output.dtype == torch.float32 else output * float("inf")


def test_non_finite_decode_is_redone_in_float32_with_a_warning(tiny):
    sd = StableDiffusion.from_pretrained(tiny("sd1")[0], torch_dtype=torch.bfloat16)
    z = _latents(batch=1, size=8)
    sd.vae.decoder.conv_out.register_forward_hook(_overflow_in_low_precision)
    with pytest.warns(NonFiniteDecodeWarning, match="decode again in float32"):
        image = decode(sd, z)
    assert torch.isfinite(image).all()
    assert next(sd.vae.parameters()).dtype == torch.bfloat16  # put back afterwards
    sd.vae.float()
    with torch.no_grad():
        assert torch.equal(image, sd.vae.decode(z / sd.scale_factor))


def test_non_finite_encode_is_redone_in_float32_with_the_same_noise(tiny):
    from diffusion_notes.pipeline import encode_image

    sd = StableDiffusion.from_pretrained(tiny("sd1")[0], torch_dtype=torch.bfloat16)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    sd.vae.encoder.conv_out.register_forward_hook(_overflow_in_low_precision)
    with pytest.warns(NonFiniteDecodeWarning, match="encode again in float32"):
        latents = encode_image(sd, image, torch.Generator().manual_seed(5))
    assert torch.isfinite(latents).all() and next(sd.vae.parameters()).dtype == torch.bfloat16
    sd.vae.float()
    assert torch.equal(latents, encode_image(sd, image, torch.Generator().manual_seed(5)))

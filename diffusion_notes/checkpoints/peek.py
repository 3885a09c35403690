"""What a model's VAE looks like, read without loading any weights: for checks made before loading.

The size rule (sides are multiples of the VAE's factor) and the memory estimate need the VAE's
downsampling factor and its first channel count. A diffusers folder states them in
``vae/config.json`` (``block_out_channels``); a safetensors single file in its JSON header (the
shapes of ``first_stage_model.*``, read as ``meta`` tensors by the same code that reads a loaded
file's architecture, :func:`~diffusion_notes.checkpoints.detect.vae_config_from_state_dict`). A
pickle (``.ckpt``) cannot be read without loading it, so there the answer is None and the checks
run right after loading, still before any generation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..models.config import AutoencoderConfig
from .detect import vae_config_from_state_dict
from .diffusers_layout import vae_config_from_diffusers
from .key_layout import VAE_PREFIX
from .safetensors_header import read_safetensors_header

__all__ = ["VaeGeometry", "peek_vae"]


@dataclass(frozen=True)
class VaeGeometry:
    factor: int  # pixels per latent pixel (8 for every SD release)
    channels: int  # channels of the first (full-resolution) VAE level (128 for every SD release)

    @classmethod
    def of(cls, config: AutoencoderConfig) -> VaeGeometry:
        """One downsampling by 2 between consecutive levels (CompVis ``Encoder``: ``ch_mult``; diffusers:
        ``block_out_channels``)."""
        return cls(2 ** (len(config.ch_mult) - 1), config.ch)


def peek_vae(source) -> VaeGeometry | None:
    """The VAE geometry of a diffusers folder or a safetensors single file; None when it cannot be
    told without loading (a pickle, a hub id, an unreadable or unexpected file: the loader reports those)."""
    try:
        path = Path(source)
        if path.is_dir():
            return VaeGeometry.of(vae_config_from_diffusers(json.loads((path / "vae" / "config.json").read_text())))
        if path.is_file():
            vae = read_safetensors_header(path).meta_tensors(VAE_PREFIX)
            return VaeGeometry.of(vae_config_from_state_dict(vae)) if vae else None
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None  # CheckpointError and SettingsError are ValueErrors
    return None

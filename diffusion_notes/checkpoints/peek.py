"""What a model's VAE looks like, read without loading any weights: for checks made before loading.

The size rule (sides are multiples of the VAE's factor) and the memory estimate need the VAE's
downsampling factor and its first channel count. A diffusers folder states them in
``vae/config.json`` (``block_out_channels``); a safetensors single file in its JSON header (the
shapes of ``first_stage_model.encoder.*``). A pickle (``.ckpt``) cannot be read without loading it,
so there the answer is None and the checks run right after loading, still before any generation.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VaeGeometry", "peek_vae"]

_MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class VaeGeometry:
    factor: int  # pixels per latent pixel (8 for every SD release)
    channels: int  # channels of the first (full-resolution) VAE level (128 for every SD release)


def peek_vae(source) -> VaeGeometry | None:
    """The VAE geometry of a diffusers folder or a safetensors single file; None when it cannot be
    told without loading (a pickle, a hub id, an unreadable or unexpected file: the loader reports those)."""
    try:
        path = Path(source)
        if path.is_dir():
            return _from_folder(path)
        if path.is_file():
            return _from_safetensors_header(path)
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error, AttributeError):
        return None
    return None


def _from_folder(root: Path) -> VaeGeometry | None:
    config = json.loads((root / "vae" / "config.json").read_text())
    channels = list(config["block_out_channels"])
    return VaeGeometry(2 ** (len(channels) - 1), int(channels[0]))


def _from_safetensors_header(path: Path) -> VaeGeometry | None:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER:
            return None
        header = json.loads(f.read(length))
    prefix = "first_stage_model.encoder."
    levels = {int(m.group(1)) for k in header if (m := re.match(re.escape(prefix) + r"down\.(\d+)\.", k))}
    conv_in = header.get(prefix + "conv_in.weight")
    if not levels or not conv_in:
        return None
    return VaeGeometry(2 ** (max(levels)), int(conv_in["shape"][0]))

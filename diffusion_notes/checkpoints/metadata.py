r"""The settings a single file cannot show in its tensors, in the safetensors ``__metadata__`` header.

A safetensors file starts with a JSON header; its ``__metadata__`` entry is a free string-to-string
table, the format's own place for facts about the weights. The shapes of an original SD checkpoint
fix the architecture's widths and depths (``checkpoints.detect``), but five things are invisible
there and used to be assumed from the family (SD 1.x: 8 UNet heads, 64-channel CLIP heads, eps,
0.18215, 512x512). A custom or fine-tuned model that differs would load silently wrong, so
``StableDiffusion.save_single_file`` writes them and ``from_single_file`` reads them back:

=====================================  ===========================================================
key                                    value
=====================================  ===========================================================
``diffusion_notes.scale_factor``       latent scale factor (CompVis ``scale_factor``), e.g. ``"0.18215"``
``diffusion_notes.prediction_type``    ``"eps"`` or ``"v"`` (CompVis ``parameterization``)
``diffusion_notes.unet.num_heads``     CompVis ``num_heads`` (``"-1"`` = unused)
``diffusion_notes.unet.num_head_channels``  CompVis ``num_head_channels`` (``"-1"`` = unused)
``diffusion_notes.text.num_attention_heads``  heads of each CLIP text encoder, comma-separated
``modelspec.resolution``               native ``WIDTHxHEIGHT`` (the key of Stability's ModelSpec)
=====================================  ===========================================================

An original YAML (``config=``) still overrides what the header says; a value the header lacks
falls back to the family's release (for files written by other tools, which carry none of it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from .safetensors_header import read_safetensors_header, starts_like_safetensors

__all__ = ["ModelMetadata", "to_header", "read_header", "from_header"]

_NS = "diffusion_notes."
_KEYS = {
    "scale_factor": _NS + "scale_factor",
    "prediction_type": _NS + "prediction_type",
    "num_heads": _NS + "unet.num_heads",
    "num_head_channels": _NS + "unet.num_head_channels",
    "text_heads": _NS + "text.num_attention_heads",
    "resolution": "modelspec.resolution",
}


@dataclass(frozen=True)
class ModelMetadata:
    """What a header says; None where it says nothing."""

    scale_factor: float | None = None
    prediction_type: str | None = None
    num_heads: int | None = None
    num_head_channels: int | None = None
    text_heads: tuple[int, ...] | None = None
    #: native (height, width) in pixels
    native_size: tuple[int, int] | None = None


def to_header(meta: ModelMetadata) -> dict[str, str]:
    """The ``__metadata__`` strings of ``meta`` (fields that are None are left out)."""
    out = {}
    if meta.scale_factor is not None:
        out[_KEYS["scale_factor"]] = repr(float(meta.scale_factor))
    if meta.prediction_type is not None:
        out[_KEYS["prediction_type"]] = meta.prediction_type
    if meta.num_heads is not None:
        out[_KEYS["num_heads"]] = str(int(meta.num_heads))
    if meta.num_head_channels is not None:
        out[_KEYS["num_head_channels"]] = str(int(meta.num_head_channels))
    if meta.text_heads is not None:
        out[_KEYS["text_heads"]] = ",".join(str(int(h)) for h in meta.text_heads)
    if meta.native_size is not None:
        height, width = meta.native_size
        out[_KEYS["resolution"]] = f"{int(width)}x{int(height)}"
    return out


def read_header(path) -> dict[str, str]:
    """The ``__metadata__`` table of a safetensors file (empty for other containers, unreadable files, or none);
    what ``safetensors.safe_open(path).metadata()`` returns."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if not starts_like_safetensors(f.read(9)):  # a .ckpt pickle or zip: it has no such header
                return {}
        return dict(read_safetensors_header(path).metadata)
    except (OSError, CheckpointError):  # missing or damaged: the weights reader reports it
        return {}


def from_header(header: dict[str, str], path="checkpoint") -> ModelMetadata:
    """Parse the keys of :func:`to_header`; a malformed value is a ``CheckpointError`` naming the key."""

    def parse(name, convert):
        key = _KEYS[name]
        if key not in header:
            return None
        try:
            return convert(header[key])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: metadata {key}={header[key]!r} is malformed ({exc}); "
                                  "fix or remove it, or pass a YAML config.") from exc

    def prediction(value: str) -> str:
        if value not in ("eps", "v"):
            raise ValueError("expected 'eps' or 'v'")
        return value

    def size(value: str) -> tuple[int, int]:
        width, height = (int(n) for n in value.lower().split("x"))
        if width <= 0 or height <= 0:
            raise ValueError("expected WIDTHxHEIGHT with positive sides")
        return height, width

    return ModelMetadata(
        scale_factor=parse("scale_factor", float), prediction_type=parse("prediction_type", prediction),
        num_heads=parse("num_heads", int), num_head_channels=parse("num_head_channels", int),
        text_heads=parse("text_heads", lambda v: tuple(int(h) for h in v.split(","))),
        native_size=parse("resolution", size),
    )

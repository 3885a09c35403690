"""The miniature shipped with the package: where it lives and how to load it.

``weights/mini_sd.safetensors`` is an original-layout SD 1.x single file (fp16), its settings in the
safetensors header; ``weights/tokenizer/`` is its CLIP tokenizer. Both were written by
``python -m diffusion_notes train-mini-sd --out-dir diffusion_notes/mini_sd/weights`` (see
``MODEL_CARD.md``). Loading goes through ``StableDiffusion.from_single_file``, the same code path as a
downloaded SD 1.5 checkpoint.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from .train import TOKENIZER_NAME, WEIGHTS_NAME

__all__ = ["MODEL_NAME", "weights_dir", "weights_path", "tokenizer_path", "load_mini_sd"]

#: How the command line and PNG metadata name the shipped model.
MODEL_NAME = "mini-sd-digits"


def weights_dir() -> Path:
    return Path(str(resources.files("diffusion_notes.mini_sd").joinpath("weights")))


def weights_path() -> Path:
    """The shipped single file."""
    return weights_dir() / WEIGHTS_NAME


def tokenizer_path() -> Path:
    """The shipped tokenizer folder (``vocab.json`` + ``merges.txt``)."""
    return weights_dir() / TOKENIZER_NAME


def load_mini_sd(torch_dtype: torch.dtype | None = None, device=None, prepack: bool | None = None):
    """The shipped miniature as a ``StableDiffusion`` (float32 on the CPU unless told otherwise);
    ``prepack=False`` keeps plain (trainable) convolutions."""
    from ..stable_diffusion import StableDiffusion

    return StableDiffusion.from_single_file(weights_path(), tokenizer=tokenizer_path(), torch_dtype=torch_dtype,
                                            device=device, prepack=prepack)

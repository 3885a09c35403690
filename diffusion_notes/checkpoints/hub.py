"""Model folders by name: a local path, else the Hugging Face cache, else the hub when online."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError

__all__ = ["offline", "resolve_folder", "HUB_PATTERNS"]

#: What from_pretrained reads from a hub repo (not the safety checker, EMA or fp16 variants).
HUB_PATTERNS = ["model_index.json", "scheduler/*", "tokenizer*/*"] + [
    f"{part}/{name}" for part in ("unet", "vae", "text_encoder", "text_encoder_2")
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "model.safetensors")
]


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: read the cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_folder(name_or_path) -> Path:
    """A local folder, or a hub id resolved through the Hugging Face cache (then the hub when online)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    from huggingface_hub import snapshot_download

    for local_only in (True,) if offline() else (True, False):
        try:
            return Path(snapshot_download(str(name_or_path), allow_patterns=HUB_PATTERNS,
                                          local_files_only=local_only, cache_dir=os.environ.get("HF_HUB_CACHE")))
        except Exception:  # not cached / no network / unknown or gated repo: report once below
            continue
    why = "HF_HUB_OFFLINE=1 and it is not in the cache" if offline() else "it is not cached and the download failed"
    raise CheckpointError(f"{name_or_path!r} is not a local folder and {why}; pass a local diffusers folder "
                          "(with model_index.json) or use StableDiffusion.from_single_file('model.safetensors').")

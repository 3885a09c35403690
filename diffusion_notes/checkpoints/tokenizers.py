"""Where the CLIP tokenizers come from: a diffusers folder, a tokenizer folder, or the Hugging Face cache.

Single files carry no tokenizer; a diffusers folder carries ``tokenizer/`` (and SDXL ``tokenizer_2/``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError
from .hub import offline
from .key_layout import TEXT_PREFIXES, is_openclip

__all__ = ["TOKENIZER_REPOS", "load_tokenizer", "hub_tokenizer", "pad_tokens", "single_file_tokenizers"]

#: Hugging Face repos whose tokenizers single files use: (repo id, subfolder) per text encoder.
TOKENIZER_REPOS = {
    "sd1": (("openai/clip-vit-large-patch14", ""),),
    "sd2": (("stabilityai/stable-diffusion-2-1", "tokenizer"),),
    "sdxl": (("openai/clip-vit-large-patch14", ""), ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "")),
}


def load_tokenizer(folder, pad_token: str | None = None):
    """``CLIPTokenizer.from_pretrained(folder)`` (77 tokens; the loaders then set ``model_max_length`` to the
    text encoder's position count, which is 77 for every release), refusing a folder without tokenizer files."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not has_bpe and not (folder / "tokenizer.json").is_file():
        # transformers would silently build a 2-token tokenizer from nothing; refuse instead.
        raise CheckpointError(f"{folder}: no CLIP tokenizer here (needs tokenizer.json, or vocab.json and "
                              "merges.txt); pass a tokenizer folder or a diffusers model folder.")
    overrides = {"pad_token": pad_token} if pad_token else {}
    try:
        return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, **overrides)
    except (OSError, ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:  # malformed vocab/merges/json
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{folder}: the tokenizer files cannot be read ({first[:160]}); fetch them again.") from None


def hub_tokenizer(repo: str, subfolder: str, pad_token: str | None):
    """A tokenizer from the Hugging Face cache, else the hub when online; None when neither has it."""
    from huggingface_hub import snapshot_download

    patterns = [f"{subfolder}/*.json", f"{subfolder}/*.txt"] if subfolder else ["*.json", "*.txt"]
    cache_dir = os.environ.get("HF_HUB_CACHE")  # read now, so a changed cache location is honoured
    for local_only in (True,) if offline() else (True, False):
        try:
            root = snapshot_download(repo, allow_patterns=patterns, local_files_only=local_only, cache_dir=cache_dir)
            return load_tokenizer(Path(root) / subfolder, pad_token)
        except Exception:  # not cached / unreachable / incomplete: try the next source, then report once
            continue
    return None


def pad_tokens(family: str) -> list[str | None]:
    """open_clip's tokenizer pads with id 0 (``"!"``), OpenAI CLIP's with end-of-text; SD 2.x and SDXL's
    second encoder read the padded positions, so the padding token changes their context."""
    return ["!" if is_openclip(prefix) else None for prefix in TEXT_PREFIXES[family]]


def single_file_tokenizers(family: str, tokenizer) -> list:
    """Tokenizers for a single file: ``tokenizer=`` folder, else the HF cache, else the hub."""
    pads = pad_tokens(family)
    if tokenizer is not None:
        root = Path(tokenizer)
        if (root / "tokenizer").is_dir():  # a diffusers folder: its tokenizer/ (and tokenizer_2/) as saved
            names = ["tokenizer", "tokenizer_2"][: len(pads)]
            # A folder without tokenizer_2/ lends its tokenizer/ to the second encoder, with that encoder's padding.
            return [load_tokenizer(root / n) if (root / n).is_dir() else load_tokenizer(root / "tokenizer", pad)
                    for n, pad in zip(names, pads)]
        return [load_tokenizer(root, pad) for pad in pads]
    found = [hub_tokenizer(repo, sub, pad) for (repo, sub), pad in zip(TOKENIZER_REPOS[family], pads)]
    if any(t is None for t in found):
        repos = " and ".join(f"{r}" + (f" (subfolder {s})" if s else "") for r, s in TOKENIZER_REPOS[family])
        raise CheckpointError(f"no tokenizer for this {family} checkpoint: pass tokenizer='path/to/folder' (a tokenizer "
                              f"folder or a diffusers model folder), or put {repos} in the Hugging Face cache, "
                              "or go online (unset HF_HUB_OFFLINE) so it can be downloaded.")
    return found

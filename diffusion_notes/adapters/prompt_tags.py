r"""AUTOMATIC1111's ``<lora:name:weight>`` prompt tags: read, found in a LoRA folder, taken out of the text.

In AUTOMATIC1111's syntax a prompt names the LoRAs it wants: ``a house <lora:bold_strokes:0.8>`` merges
the file ``bold_strokes.safetensors`` of the LoRA folder with multiplier 0.8 for that generation, and
the tag itself is removed before the prompt is encoded (``modules/extra_networks.py``: the pattern
``<(\w+):([^>]+)>``, arguments split at ``:``; ``extensions-builtin/Lora/extra_networks_lora.py``: the
second argument is the multiplier, 1 when absent). Here:

* :func:`split_lora_tags`: one prompt -> its text without the tags, and the tags (pure, no files);
* :func:`find_lora`: a name -> its file in the folder (``.safetensors``, ``.pt``, ``.ckpt``, searched
  in subfolders too, as AUTOMATIC1111 does);
* :func:`prompt_loras`: the prompts and negative prompts of one generation -> their texts without
  tags and the ``(file, weight)`` pairs to merge, each LoRA once.

The pipeline (:func:`diffusion_notes.pipeline.generate`) applies them with
:func:`diffusion_notes.adapters.lora.temporary_loras` around the generation only, with
``prompt_syntax="a1111"``; in the plain syntax (CompVis's) a tag is ordinary text. The PNG's
``parameters`` keep the prompt as typed, tags included, and ``Lora hashes`` names the files.

Where this differs from AUTOMATIC1111 (``docs/conventions.md``): tags in the negative prompt are
applied and removed too (AUTOMATIC1111 reads the positive prompts only and leaves a negative prompt's
tag as text); tags of every prompt of a batch apply (AUTOMATIC1111 takes the first prompt's), and one
LoRA named with two weights is refused; the per-part multipliers ``<lora:name:te:unet>``, ``te=``,
``unet=``, ``dyn=`` and other extra networks (``<hypernet:...>``) are refused, not ignored; a name is a
file stem (not the ``ss_output_name`` alias of the file's metadata).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SettingsError

__all__ = ["LoraTag", "LORA_SUFFIXES", "split_lora_tags", "find_lora", "lora_files", "prompt_loras"]

#: AUTOMATIC1111's extra-network tag (``modules/extra_networks.py``, ``re_extra_net``).
TAG = re.compile(r"<(\w+):([^>]+)>")
#: The tag kinds that name a LoRA (``lyco`` is AUTOMATIC1111's alias for LyCORIS files).
LORA_KINDS = ("lora", "lyco")
#: The files a LoRA folder is searched for, in this order of preference.
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")


@dataclass(frozen=True)
class LoraTag:
    """One ``<lora:name:weight>`` tag: the LoRA's name, its multiplier (1 when not given) and the tag as typed."""

    name: str
    weight: float
    text: str


def _weight(text: str, tag: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight):
        raise SettingsError("prompt", f"{tag}: the weight {text!r} is not a finite number; write e.g. "
                            "<lora:name:0.8> (or <lora:name> for 1)")
    return weight


def split_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """``(text without the tags, [LoraTag, ...])`` for one prompt, in AUTOMATIC1111's syntax.

    ``<lora:name>`` has weight 1, ``<lora:name:w>`` weight ``w`` (any finite number, negative too);
    each tag is replaced by nothing, as AUTOMATIC1111 does (the text around it is kept as it is).
    Raises :class:`~diffusion_notes.errors.SettingsError` (option ``prompt``) for a tag this package
    does not apply: another extra network, separate text-encoder / UNet weights, or a bad weight."""
    tags: list[LoraTag] = []

    def take(match: re.Match) -> str:
        kind, arguments, tag = match.group(1), match.group(2).split(":"), match.group(0)
        if kind not in LORA_KINDS:
            raise SettingsError("prompt", f"{tag}: <{kind}:...> tags are not supported (only <lora:name:weight>); "
                                "remove the tag, or use --prompt-syntax plain to keep it as text")
        name, rest = arguments[0].strip(), arguments[1:]
        if not name:
            raise SettingsError("prompt", f"{tag}: no LoRA name; write <lora:name:weight>")
        if any("=" in a for a in rest) or len(rest) > 1:
            raise SettingsError("prompt", f"{tag}: separate text-encoder / UNet weights (te=, unet=, dyn= or a third "
                                "number) are not supported; give one weight: <lora:name:weight>")
        tags.append(LoraTag(name, _weight(rest[0].strip(), tag) if rest else 1.0, tag))
        return ""

    return TAG.sub(take, prompt), tags


def lora_files(folder) -> dict[str, Path]:
    """``{name: file}`` for every LoRA file in ``folder`` and its subfolders (name = file stem; where two
    files share a stem, the first suffix of :data:`LORA_SUFFIXES` wins)."""
    found: dict[str, Path] = {}
    for suffix in LORA_SUFFIXES:
        for path in sorted(Path(folder).rglob(f"*{suffix}")):
            if path.is_file():
                found.setdefault(path.stem, path)
    return found


def check_lora_dir(folder) -> Path:
    """``folder`` as a Path, or :class:`SettingsError` (option ``lora_dir``) when it is no readable folder."""
    if not isinstance(folder, (str, os.PathLike)):
        raise SettingsError("lora_dir", f"lora_dir must be a folder path, got {type(folder).__name__}")
    path = Path(folder)
    if not path.is_dir():
        raise SettingsError("lora_dir", f"lora_dir {path}: no such folder" if not path.exists() else
                            f"lora_dir {path} is a file, not a folder of LoRA files")
    if not os.access(path, os.R_OK | os.X_OK):
        raise SettingsError("lora_dir", f"lora_dir {path}: the folder cannot be read")
    return path


def find_lora(name: str, folder) -> Path:
    """The file of the LoRA ``name`` in ``folder``; :class:`SettingsError` (option ``lora_dir``) listing
    what the folder has when there is none."""
    files = lora_files(check_lora_dir(folder))
    if name in files:
        return files[name]
    have = ", ".join(sorted(files)[:20]) + (", ..." if len(files) > 20 else "") if files else "no LoRA files"
    raise SettingsError("lora_dir", f"<lora:{name}>: no {name}.safetensors, .pt or .ckpt in the LoRA folder "
                        f"{folder} (it has: {have})")


def prompt_loras(prompts: list[str], negative_prompts: list[str], folder) -> tuple[list[str], list[str], list]:
    """``(prompts, negative prompts, [(file, weight), ...])``: the texts without their tags, and each
    LoRA the tags name, once, in the order of first mention (prompts before negative prompts).

    A LoRA named twice with the same weight (a prompt repeated for several images) counts once; with two
    weights it is refused. Tags with no ``folder`` (None) are refused: the LoRA folder is ``lora_dir``
    (``--lora-dir``). Raises :class:`SettingsError`."""
    weights: dict[str, LoraTag] = {}
    texts = []
    for text in list(prompts) + list(negative_prompts):
        stripped, tags = split_lora_tags(text)
        texts.append(stripped)
        for tag in tags:
            first = weights.setdefault(tag.name, tag)
            if first.weight != tag.weight:
                raise SettingsError("prompt", f"the LoRA {tag.name!r} is given two weights in one generation "
                                    f"({first.text} and {tag.text}); give it one")
    if weights and folder is None:
        tag = next(iter(weights.values()))
        raise SettingsError("lora_dir", f"{tag.text}: no LoRA folder to find {tag.name!r} in; pass lora_dir= "
                            "(--lora-dir on the command line)")
    loras = [(find_lora(name, folder), tag.weight) for name, tag in weights.items()]
    return texts[:len(prompts)], texts[len(prompts):], loras

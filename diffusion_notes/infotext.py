r"""The PNG's ``parameters`` text: how a picture was made, in AUTOMATIC1111's format.

Many tools (AUTOMATIC1111's "PNG Info" tab, ComfyUI, image boards) read generation parameters back
from a ``parameters`` tEXt chunk laid out like this::

    a photograph of an astronaut riding a horse
    Negative prompt: blurry
    Steps: 50, Sampler: PLMS, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: v1-5-pruned-emaonly

:func:`infotext_fields` derives the fields from a :class:`~diffusion_notes.settings.Request`,
:func:`format_parameters` writes the text and :func:`parse_parameters` reads it back.
"""

from __future__ import annotations

import json
import re

__all__ = ["infotext_fields", "format_parameters", "parse_parameters", "adapter_fields", "quote", "ADAPTER_FIELDS"]


def infotext_fields(request, seed: int | None) -> dict:
    """AUTOMATIC1111's ``parameters`` fields of one :class:`~diffusion_notes.settings.Request`.

    ``seed`` is the seed actually used (None when the caller's own generator was used: no seed could
    honestly be written). Steps, the sampler's label (with its σ schedule, "DPM++ 2M Karras"), the
    ``eta`` given, CFG scale, size, the denoising strength where the request has one, and ``Clip skip``
    when above 1 (as AUTOMATIC1111 writes it).
    """
    eta = request.sampler.options.get("eta")
    strength = request.strength
    clip_skip = request.conditioning.clip_skip
    return dict(steps=request.sampler.steps, sampler=request.sampler.label,
                cfg_scale=request.conditioning.guidance_scale, seed=seed, size=request.size.label,
                eta=eta if eta else None, denoising_strength=strength.strength if strength is not None else None,
                clip_skip=clip_skip if clip_skip > 1 else None)


#: The fields the adapters add (:func:`adapter_fields`), written after the others as AUTOMATIC1111 does.
ADAPTER_FIELDS = ("lora_hashes", "ti_hashes")


def adapter_fields(loras, embeddings) -> dict:
    """AUTOMATIC1111's ``Lora hashes`` and ``TI hashes`` fields: ``"name: hash, name2: hash2"``.

    ``loras``: the merged LoRAs (:class:`~diffusion_notes.adapters.lora.AppliedLora`: ``name``,
    ``short_hash``, the first 12 hex digits of AUTOMATIC1111's hash of the file); ``embeddings``:
    ``(token, short hash)`` of the textual-inversion embeddings the prompts use (the first 12 hex
    digits of the sha256 of the file). Names lose their ``:`` and ``,`` (AUTOMATIC1111's
    ``extra_networks_lora.py`` and ``sd_hijack_clip.py``); None where there is none."""

    def listed(pairs) -> str | None:
        return ", ".join(f"{name.replace(':', '').replace(',', '')}: {short}" for name, short in pairs) or None

    return {"lora_hashes": listed((a.name, a.short_hash) for a in loras), "ti_hashes": listed(embeddings)}


def quote(value) -> str:
    """AUTOMATIC1111's ``infotext_utils.quote``: a value holding ``,``, ``:`` or a line break is written as a
    JSON string (``Lora hashes: "a: 0123456789ab, b: ..."``), anything else as it is."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def format_parameters(prompt: str, negative_prompt: str = "", **fields) -> str:
    """AUTOMATIC1111's infotext: the prompt, an optional ``Negative prompt:`` line, then ``Key: value`` pairs.

    ``fields`` use Python names (``cfg_scale=7.5`` -> ``CFG scale: 7.5``); None values are left out;
    values holding ``,`` or ``:`` are quoted (:func:`quote`).
    """
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{_label(k)}: {quote(v)}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


_LABELS = {"cfg_scale": "CFG scale", "eta": "Eta", "denoising_strength": "Denoising strength",
           "ti_hashes": "TI hashes", "vae": "VAE"}


def _label(key: str) -> str:
    return _LABELS.get(key, key.replace("_", " ").capitalize())


def parse_parameters(text: str) -> dict:
    """The inverse of :func:`format_parameters`: ``{"prompt", "negative_prompt", "Steps", "Sampler", ...}``
    (values as strings; the keys of the last line as written in the file)."""
    lines = text.split("\n")
    *head, last = lines
    negative = [line for line in head if line.startswith("Negative prompt: ")]
    prompt = "\n".join(line for line in head if not line.startswith("Negative prompt: "))
    out = {"prompt": prompt, "negative_prompt": negative[0].removeprefix("Negative prompt: ") if negative else ""}
    for key, value in _PARAMETER.findall(last):
        out[key] = _unquote(value.strip())
    return out


#: AUTOMATIC1111's ``infotext_utils.re_param_code``: ``Key: value`` or ``Key: "quoted, value"``.
_PARAMETER = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def _unquote(text: str) -> str:
    if not text.startswith('"') or not text.endswith('"') or len(text) < 2:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text



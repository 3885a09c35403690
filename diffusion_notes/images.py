r"""Pictures in and out of the pipeline: PIL <-> tensors, grids, and PNGs that remember how they were made.

Conventions (the same as CompVis's scripts and diffusers' ``VaeImageProcessor``):

* the VAE reads and writes images as ``(B, 3, H, W)`` float tensors in :math:`[-1, 1]`;
* arrays for people are ``(B, H, W, 3)`` floats in :math:`[0, 1]` (diffusers ``output_type="np"``),
  and 8-bit pixels are ``round(255 * x)``;
* masks are 1 (white) where the picture is to be repainted and 0 (black) where it is kept, binarised
  at 0.5 (diffusers ``mask_processor``; CompVis ``inpaint.py``: ``mask[mask < 0.5] = 0``).

Generation parameters travel inside each PNG as a ``parameters`` tEXt chunk in the format of
AUTOMATIC1111's web UI, which many tools read back::

    a photograph of an astronaut riding a horse
    Negative prompt: blurry
    Steps: 50, Sampler: PLMS, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: v1-5-pruned-emaonly
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["pil_to_tensor", "mask_to_tensor", "tensor_to_array", "array_to_pil", "make_grid",
           "format_parameters", "parse_parameters", "save_png"]


def pil_to_tensor(image) -> torch.Tensor:
    """A PIL image (any mode) -> ``(1, 3, H, W)`` float32 in [-1, 1] (CompVis ``load_img``: ``2 * x - 1``)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None] * 2.0 - 1.0


def mask_to_tensor(mask) -> torch.Tensor:
    """A PIL mask (white = repaint) or a tensor in [0, 1] -> ``(1, 1, H, W)`` float32 of zeros and ones."""
    if isinstance(mask, torch.Tensor):
        values = mask.float().reshape(1, 1, *mask.shape[-2:])
    else:
        values = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
    return (values >= 0.5).float()


def tensor_to_array(images: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` in [-1, 1] -> ``(B, H, W, 3)`` float32 in [0, 1], clamped (diffusers ``postprocess``)."""
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu().numpy()


def array_to_pil(arrays: np.ndarray) -> list:
    """``(B, H, W, 3)`` floats in [0, 1] -> PIL images (diffusers ``numpy_to_pil``: ``round(255 x)``)."""
    from PIL import Image

    return [Image.fromarray((a * 255.0).round().astype(np.uint8)) for a in arrays]


def make_grid(images: list, n_rows: int, padding: int = 2):
    """Paste equal-sized PIL images into ``n_rows`` rows with ``padding`` black pixels between and around
    them, as ``torchvision.utils.make_grid`` does in CompVis's ``txt2img.py`` (one row per iteration)."""
    from PIL import Image

    n_cols = -(-len(images) // n_rows)
    width, height = images[0].size
    grid = Image.new("RGB", (n_cols * (width + padding) + padding, n_rows * (height + padding) + padding))
    for index, image in enumerate(images):
        row, col = divmod(index, n_cols)
        grid.paste(image, (padding + col * (width + padding), padding + row * (height + padding)))
    return grid


def format_parameters(prompt: str, negative_prompt: str = "", **fields) -> str:
    """AUTOMATIC1111's infotext: the prompt, an optional ``Negative prompt:`` line, then ``Key: value`` pairs.

    ``fields`` use Python names (``cfg_scale=7.5`` -> ``CFG scale: 7.5``); None values are left out.
    """
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{_label(k)}: {v}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


_LABELS = {"cfg_scale": "CFG scale", "eta": "Eta", "denoising_strength": "Denoising strength"}


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
    for pair in last.split(", "):
        key, _, value = pair.partition(": ")
        out[key] = value
    return out


def save_png(image, path, parameters: str | None = None) -> Path:
    """Write ``image`` to ``path`` with a ``parameters`` tEXt chunk; never replaces an existing file.

    The file is opened with ``"xb"`` (create, fail if it exists), so even two runs racing for the same
    number cannot overwrite each other's pictures.
    """
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    path = Path(path)
    with open(path, "xb") as f:
        try:
            image.save(f, format="PNG", pnginfo=info)
        except BaseException:
            f.close()
            os.unlink(path)  # no half-written picture left behind
            raise
    return path

r"""The miniature's data: scikit-learn's 8x8 digits, upsampled to 32x32 RGB, with generated captions.

Images come from :func:`diffusion_notes.toy.digits.load_split` (the same fixed train/test split
as the toy DDPM and its judge), in [-1, 1], upsampled bilinearly 8x8 -> 32x32 (``F.interpolate``,
``align_corners=False``) and repeated over three channels, because Stable Diffusion's autoencoder
reads RGB. Each image is paired with a caption drawn from :data:`TEMPLATES` for its label, e.g.
"a handwritten seven", "the digit 7", "a 7 written by hand", "seven". Classifier-free guidance
needs the unconditional model too: with probability ``p_uncond`` the caption is replaced by ``""``
(Ho & Salimans 2022, Algorithm 1), which is exactly what the pipeline feeds the UNet as ``uc``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..toy.digits import load_split

__all__ = ["IMAGE_SIZE", "NAMES", "TEMPLATES", "WORDS", "caption", "all_captions", "upsample", "load_images",
           "sample_captions"]

IMAGE_SIZE = 32
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Caption phrasings; ``{name}`` is the word ("seven"), ``{digit}`` the numeral ("7").
TEMPLATES = (
    "a handwritten {name}",
    "the digit {digit}",
    "a {digit} written by hand",
    "{name}",
    "the number {name}",
    "a drawing of the digit {name}",
    "handwritten {digit}",
    "a picture of a {digit}",
)


def caption(label: int, template: int = 0) -> str:
    """The caption of ``label`` in phrasing ``template`` (an index into :data:`TEMPLATES`)."""
    return TEMPLATES[template].format(name=NAMES[label], digit=label)


def all_captions(label: int) -> list[str]:
    """Every phrasing of ``label``'s caption."""
    return [caption(label, k) for k in range(len(TEMPLATES))]


#: Every word the captions use: the tokenizer's vocabulary (numerals are single characters already).
WORDS = tuple(dict.fromkeys(w for label in range(10) for c in all_captions(label) for w in c.split() if not w.isdigit()))


def upsample(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(N, 1, 8, 8) in [-1, 1] -> (N, 3, size, size): bilinear upsampling, grey repeated as RGB."""
    up = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return up.clamp(-1, 1).repeat(1, 3, 1, 1)


def load_images(split: str = "train", size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, 3, size, size) in [-1, 1], labels (N,))`` of the fixed digits split."""
    images, labels = load_split(split)
    return upsample(images, size), labels


def sample_captions(labels: torch.Tensor, p_uncond: float, generator: torch.Generator) -> list[str]:
    """One caption per label, in a random phrasing; ``""`` with probability ``p_uncond`` (caption dropout)."""
    templates = torch.randint(0, len(TEMPLATES), (len(labels),), generator=generator)
    drop = torch.rand(len(labels), generator=generator) < p_uncond
    return ["" if d else caption(int(y), int(k)) for y, k, d in zip(labels, templates, drop)]

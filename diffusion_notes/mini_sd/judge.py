r"""The independent judge of the miniature's images: the toy judge, applied after downsampling.

:mod:`diffusion_notes.toy.judge` is a logistic regression fitted on the real 8x8 training digits,
sharing nothing with any diffusion model. The miniature draws 32x32 RGB images, so each one is
brought back to the judge's input: the mean of the three channels, then the mean of every 4x4 block
(area downsampling, ``F.avg_pool2d``), clipped to [-1, 1].

Upsampling a real digit bilinearly and downsampling it again is not the identity, so the judge is
validated on exactly that round trip of the real *test* digits (:func:`ceiling`): that agreement is
the best any generator of perfect digits could score here.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..toy import judge as toy_judge
from ..toy.digits import IMAGE_SIZE as JUDGE_SIZE
from .data import load_images

__all__ = ["to_judge_input", "predict_proba", "predicted_digits", "agreement", "ceiling", "generated_agreement"]


def to_judge_input(images) -> torch.Tensor:
    """Images -> (N, 1, 8, 8) in [-1, 1]. Accepted: a (N, 3, H, W) tensor in [-1, 1]; the pipeline's
    ``arrays`` ((N, H, W, 3) floats in [0, 1]); PIL images or uint8 (N, H, W, 3) arrays in 0..255."""
    if isinstance(images, np.ndarray) or (isinstance(images, list) and not torch.is_tensor(images[0])):
        arrays = np.stack([np.asarray(im) for im in images]) if isinstance(images, list) else images
        unit = arrays.astype(np.float32) / 255.0 if arrays.dtype == np.uint8 else arrays.astype(np.float32)
        images = torch.from_numpy(unit * 2.0 - 1.0).permute(0, 3, 1, 2)
    x = torch.as_tensor(images).detach().float().cpu().mean(dim=1, keepdim=True)
    factor = x.shape[-1] // JUDGE_SIZE
    return F.avg_pool2d(x, factor).clamp(-1, 1) if factor > 1 else x.clamp(-1, 1)


def predict_proba(images) -> np.ndarray:
    """The judge's class probabilities (N, 10)."""
    return toy_judge.predict_proba(to_judge_input(images))


def predicted_digits(images) -> np.ndarray:
    """The digit the judge sees in each image."""
    return predict_proba(images).argmax(axis=1)


def agreement(images, labels) -> float:
    """Fraction of images the judge reads as the corresponding entry of ``labels``."""
    return float((predicted_digits(images) == np.asarray(torch.as_tensor(labels).cpu())).mean())


def ceiling() -> float:
    """The judge's agreement on the real test digits after the 8 -> 32 -> 8 round trip (upper bound)."""
    images, labels = load_images("test")
    return agreement(images, labels)


def generated_agreement(sd, per_digit: int = 5, guidance_scale: float = 7.5, seed: int = 0, steps: int = 50,
                        sampler: str = "plms", phrasing: int = 0) -> tuple[float, np.ndarray]:
    """Generate ``per_digit`` images for the caption of every digit (phrasing ``phrasing`` of
    :data:`~diffusion_notes.mini_sd.data.TEMPLATES`) in one batch, and judge them.

    Returns ``(agreement, predicted)``, ``predicted`` shaped (10, per_digit): what the judge read for
    the images asked to show 0, 1, ..., 9.
    """
    from .data import caption

    prompts = [caption(digit, phrasing) for digit in range(10)]
    result = sd.txt2img(prompts, steps=steps, sampler=sampler, guidance_scale=guidance_scale,
                        num_images=per_digit, seed=seed, output="array")
    predicted = predicted_digits(result.arrays).reshape(10, per_digit)  # txt2img's order: p0 x n, p1 x n, ...
    return float((predicted == np.arange(10)[:, None]).mean()), predicted

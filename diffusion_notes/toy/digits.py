"""The data: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download).

Pixels are integers 0..16; we scale them to [-1, 1] because DDPM assumes data in [-1, 1]
(Ho et al. 2020, Sec. 3.3): the prior N(0, I) at t = T then covers the data with room to spare.
The train/test split is fixed (stratified, ``random_state=0``) so that the model, the judge and
the tests all agree on which digits were seen in training.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = ["NUM_CLASSES", "IMAGE_SIZE", "to_unit_range", "load_split"]

NUM_CLASSES = 10
IMAGE_SIZE = 8
_MAX_PIXEL = 16.0  # load_digits stores ink as integers 0..16
_TEST_FRACTION = 0.2
_SPLIT_SEED = 0


def to_unit_range(pixels: np.ndarray) -> np.ndarray:
    """Map sklearn's 0..16 pixel values to [-1, 1] (0 = no ink -> -1)."""
    return pixels.astype(np.float32) / _MAX_PIXEL * 2.0 - 1.0


@lru_cache(maxsize=None)
def _split_arrays():
    # Imported here so that importing diffusion_notes.toy stays cheap.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = to_unit_range(digits.images)
    return train_test_split(
        images, digits.target, test_size=_TEST_FRACTION, random_state=_SPLIT_SEED, stratify=digits.target
    )


def load_split(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of the fixed ``"train"`` or ``"test"`` split.

    images: float32 (N, 1, 8, 8) in [-1, 1]; labels: int64 (N,) in 0..9. Fresh tensors on each
    call, so callers may modify them.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    x_train, x_test, y_train, y_test = _split_arrays()
    images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

"""Inputs shared by the pipeline tests."""

from __future__ import annotations

import numpy as np
import torch

#: Image side of the tiny models' tests: their VAE and UNet each downsample by 2, so 32 px -> 16 latent px.
SIZE = 32


def make_image(seed: int = 0):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def make_mask():
    from PIL import Image

    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 4:20] = 255  # repaint a rectangle, keep the rest
    return Image.fromarray(mask)


def make_x_T(seed: int = 3, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(seed))


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())

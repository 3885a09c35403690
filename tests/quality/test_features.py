"""FD-digits sees what matters: it grows monotonically as real digits are blurred, noised or collapsed onto
fewer digits, and precision/recall show the collapse. The floor (held-out real digits) is below all of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusion_notes.quality import precision_recall
from diffusion_notes.quality.features import digit_features, fd_digits, floor
from diffusion_notes.toy.digits import load_split

BINOMIAL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16


def blurred(images, amount):
    """Mix each image with its 3x3 binomial blur (amount 0: unchanged, 1: fully blurred), applied twice."""
    out = images
    for _ in range(2):
        out = (1 - amount) * out + amount * F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), BINOMIAL[None, None])
    return out


@pytest.fixture(scope="module")
def test_digits():
    return load_split("test")


def test_floor_and_identity(test_digits):
    train, _ = load_split("train")
    assert fd_digits(train) == pytest.approx(0.0, abs=1e-8)
    assert 0 < floor() == pytest.approx(fd_digits(test_digits[0]), rel=1e-12)


def test_grows_with_blur(test_digits):
    d = [fd_digits(blurred(test_digits[0], a)) for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(x < y for x, y in zip(d, d[1:])), d


def test_grows_with_noise(test_digits):
    z = torch.randn(test_digits[0].shape, generator=torch.Generator().manual_seed(0))
    d = [fd_digits(test_digits[0] + s * z) for s in (0.0, 0.1, 0.2, 0.4, 0.8)]
    assert all(x < y for x, y in zip(d, d[1:])), d


def test_grows_with_collapse(test_digits):
    images, labels = test_digits
    d = []
    for kept in (10, 7, 5, 3, 1):
        subset = images[labels < kept]
        d.append(fd_digits(subset[torch.arange(len(images)) % len(subset)]))  # same N, fewer digits
    assert all(x < y for x, y in zip(d, d[1:])), d


def test_precision_recall_see_the_collapse(test_digits):
    images, labels = test_digits
    real = digit_features(load_split("train")[0])
    p_all, r_all = precision_recall(real, digit_features(images))
    p_two, r_two = precision_recall(real, digit_features(images[labels < 2]))
    assert p_all > 0.8 and r_all > 0.5
    assert p_two > 0.8 and r_two < 0.3


def test_miniature_sized_images_use_the_same_features(test_digits):
    """A 32x32 RGB image made by repeating every pixel 4x4 (and the channel 3x) has the 8x8 image's features."""
    images = test_digits[0][:20]
    big = images.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3).repeat(1, 3, 1, 1)
    assert np.allclose(digit_features(big), digit_features(images), atol=1e-12)


def test_miniature_reference_is_the_upsampled_training_digits():
    """At size 32 the reference is the training digits as the miniature saw them (bilinear 8 -> 32): those images
    are at distance 0; the round trip 8 -> 32 -> 8 is a blur, so the sharp 8x8 test digits are far from that
    reference, much further than the round-tripped test digits (the floor at 32)."""
    from diffusion_notes.mini_sd.data import load_images

    assert fd_digits(load_images("train")[0], size=32) == pytest.approx(0.0, abs=1e-8)
    assert 0 < floor(32) < fd_digits(load_split("test")[0], size=32) / 5

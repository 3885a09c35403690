r"""FD-digits: features in which a Fréchet distance between sets of digit images means something, offline.

FID (Heusel et al. 2017) measures distances between Inception-v3 pool features; those weights cannot
be downloaded here, and an ImageNet network says little about 8x8 digits anyway. The digit judge
(:mod:`diffusion_notes.toy.judge`) is a logistic regression: it has no hidden layer to borrow. So the
package fits its own small feature network, the way Inception's features come from a classifier:

* a multilayer perceptron (scikit-learn ``MLPClassifier``, one hidden layer of :data:`HIDDEN_UNITS`
  ReLU units, ``random_state=0``) trained to classify the *training* split of the 8x8 digits, the
  split the diffusion models learned from; fitted once per process (about a second);
* the features of an image are its hidden activations :math:`\max(0, xW_1 + b_1)` (the penultimate
  representation, as FID uses Inception's last pooling layer rather than its class probabilities).

Why these features see what matters: the hidden units were trained to tell digits apart, so the
class *mix* moves the mean and covariance (collapse onto fewer digits), and they react to strokes
being smeared or speckled (blur, noise): ``tests/quality/test_features.py`` checks that the distance
grows monotonically in each. Images at the miniature's 32x32 RGB are brought to the judge's 8x8 grey
input first (:func:`diffusion_notes.mini_sd.judge.to_judge_input`: channel mean, 4x4 area average).

The distance of the *held-out* real test digits to the training digits (:func:`floor`) is the best a
generator of perfect digits could hope for at that sample size; report it beside every FD-digits. For the
miniature, reference and floor use the digits as it was trained on them (upsampled to 32x32, ``size=32``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..mini_sd.judge import to_judge_input
from ..toy.digits import load_split
from .frechet import feature_statistics, frechet_distance

__all__ = ["HIDDEN_UNITS", "fit_feature_network", "digit_features", "real_images", "reference_statistics", "fd_digits",
           "floor"]

#: Width of the feature network's hidden layer: the dimension D of the FD-digits features.
HIDDEN_UNITS = 64


@lru_cache(maxsize=1)
def fit_feature_network():
    """The fitted ``MLPClassifier`` (64 ReLU units) on the training digits; deterministic (``random_state=0``)."""
    from sklearn.neural_network import MLPClassifier

    images, labels = load_split("train")
    x = images.reshape(images.shape[0], -1).numpy().astype(np.float64)
    return MLPClassifier(hidden_layer_sizes=(HIDDEN_UNITS,), alpha=1e-3, max_iter=500, random_state=0).fit(x, labels.numpy())


def digit_features(images) -> np.ndarray:
    """FD-digits features (N, 64), float64, of digit images: (N, 1, 8, 8) in [-1, 1], or anything
    :func:`~diffusion_notes.mini_sd.judge.to_judge_input` takes (32x32 RGB tensors in [-1, 1], the
    pipeline's (N, H, W, 3) arrays, PIL images). Pixels are clipped to [-1, 1] first, as the judge does."""
    x = to_judge_input(images).reshape(-1, 64).double().numpy()
    network = fit_feature_network()
    return np.maximum(x @ network.coefs_[0] + network.intercepts_[0], 0.0)


@lru_cache(maxsize=8)
def real_images(split: str = "train", size: int = 8):
    """The real digits of ``split`` as a model of that ``size`` was trained on them: the 8x8 digits themselves
    (the digits DDPM), or the miniature's bilinear upsampling to ``size`` x ``size`` RGB
    (:func:`diffusion_notes.mini_sd.data.load_images`), which the 8x8 judge input then averages back down."""
    if size == 8:
        return load_split(split)[0]
    from ..mini_sd.data import load_images

    return load_images(split, size)[0]


@lru_cache(maxsize=8)
def reference_statistics(split: str = "train", size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of the FD-digits features of a real split (``"train"``: the reference) at image ``size``."""
    return feature_statistics(digit_features(real_images(split, size)))


def fd_digits(images=None, *, features=None, reference: str = "train", size: int = 8) -> float:
    """FD-digits of a set of images (or of their precomputed ``features``) to the real ``reference`` split, as
    seen at image ``size`` (8: the digits themselves; 32: the miniature's upsampled training images)."""
    if (images is None) == (features is None):
        raise ValueError("give either images or features")
    feats = digit_features(images) if features is None else features
    return frechet_distance(*feature_statistics(feats), *reference_statistics(reference, size))


def floor(size: int = 8) -> float:
    """FD-digits of the real held-out test digits (360 images) to the training digits, both at image ``size``: the floor.

    At size 8 it measures the sampling noise of 360 images; at 32 the two sets have also been through the
    miniature's 8 -> 32 upsampling and the judge's 32 -> 8 average, which is not the identity."""
    return frechet_distance(*reference_statistics("test", size), *reference_statistics("train", size))

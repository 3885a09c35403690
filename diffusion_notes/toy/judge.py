"""An independent judge of generated digits: logistic regression trained on the real training digits.

It shares nothing with the diffusion model (no weights, no features, no training code), so a
sample it recognises confidently is a sample that looks like a real digit, not one that merely
fools the model that drew it. Two scores:

* :func:`mean_top_class_probability`: how sure the judge is about *some* digit, averaged over
  images. Real test digits score about 0.9; pure noise about 0.5. It measures "looks like a digit".
* :func:`agreement`: how often the judge's answer equals the digit that was asked for. It measures
  whether the class conditioning (and classifier-free guidance) works.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .digits import load_split

__all__ = ["fit_judge", "predict_proba", "mean_top_class_probability", "agreement"]


@lru_cache(maxsize=1)
def fit_judge():
    """The fitted scikit-learn ``LogisticRegression`` (fitted once per process, in well under a second)."""
    from sklearn.linear_model import LogisticRegression

    images, labels = load_split("train")
    return LogisticRegression(max_iter=5000).fit(_features(images), labels.numpy())


def _features(images) -> np.ndarray:
    # Samplers can overshoot [-1, 1] slightly; a pixel is never darker than "no ink" or brighter
    # than "full ink", so clip before judging rather than reward or punish the overshoot.
    x = torch.as_tensor(images, dtype=torch.float32).detach().cpu().clamp(-1, 1)
    return x.reshape(x.shape[0], -1).numpy()


def predict_proba(images) -> np.ndarray:
    """Class probabilities (N, 10) for images of shape (N, 1, 8, 8) or (N, 8, 8), values in [-1, 1]."""
    return fit_judge().predict_proba(_features(images))


def mean_top_class_probability(images) -> float:
    """Mean over images of the judge's highest class probability."""
    return float(predict_proba(images).max(axis=1).mean())


def agreement(images, labels) -> float:
    """Fraction of images the judge classifies as the corresponding entry of ``labels``."""
    labels = np.asarray(torch.as_tensor(labels).cpu())
    return float((predict_proba(images).argmax(axis=1) == labels).mean())

import numpy as np
import torch

from diffusion_notes.toy import judge
from diffusion_notes.toy.digits import load_split


def test_real_test_digits_score_high():
    images, labels = load_split("test")  # never seen by the judge
    assert judge.mean_top_class_probability(images) > 0.90  # measured 0.945
    assert judge.agreement(images, labels) > 0.95  # measured 0.969


def test_pure_noise_scores_low():
    noise = torch.randn(500, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert judge.mean_top_class_probability(noise) < 0.75  # measured 0.65
    labels = torch.arange(10).repeat(50)
    assert judge.agreement(noise, labels) < 0.3  # chance is 0.1


def test_wrong_labels_disagree():
    images, labels = load_split("test")
    assert judge.agreement(images, (labels + 1) % 10) < 0.05


def test_input_shapes_and_clipping():
    images, _ = load_split("test")
    p = judge.predict_proba(images)
    assert p.shape == (len(images), 10) and np.allclose(p.sum(axis=1), 1)
    assert np.array_equal(judge.predict_proba(images[:, 0]), p)  # (N, 8, 8) works too
    # Overshooting [-1, 1] is clipped, not extrapolated.
    assert np.array_equal(judge.predict_proba(images * 3), judge.predict_proba((images * 3).clamp(-1, 1)))

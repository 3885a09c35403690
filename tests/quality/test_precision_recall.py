"""Improved precision and recall against a brute-force transcription of Kynkäänniemi et al. 2019, Eq. 1-2."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffusion_notes.quality import kth_neighbour_radii, precision_recall


def brute_force(real, fake, k):
    """Eq. 1-2 written with loops: f(φ, Φ) = 1 iff some φ' in Φ is at least as close to φ as its own
    k-th nearest neighbour in Φ (itself excluded)."""

    def radius(i, points):
        others = sorted(math.dist(points[i], points[j]) for j in range(len(points)) if j != i)
        return others[k - 1]

    def f(phi, points):
        return any(math.dist(phi, points[j]) <= radius(j, points) for j in range(len(points)))

    precision = sum(f(phi, real) for phi in fake) / len(fake)
    recall = sum(f(phi, fake) for phi in real) / len(real)
    return precision, recall


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_brute_force(k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(40, 3))
    fake = rng.normal(size=(30, 3)) * 0.6 + 1.0
    got = precision_recall(real, fake, k)
    assert got == pytest.approx(brute_force(real.tolist(), fake.tolist(), k), abs=1e-12)
    assert 0 < got[0] < 1 and 0 < got[1] < 1  # the example is not degenerate


def test_radii_brute_force():
    x = np.random.default_rng(0).normal(size=(12, 2))
    for i in range(12):
        d = sorted(np.linalg.norm(x[i] - x[j]) for j in range(12) if j != i)
        assert kth_neighbour_radii(x, 3)[i] == pytest.approx(d[2], rel=1e-12)


def test_mode_collapse_high_precision_low_recall():
    """Real data: 10 well-separated clusters. A generator that only draws 2 of them: precision high, recall low;
    one that draws all 10 has the same precision and a high recall. (Two samples of one distribution do not
    score 1: a finite k-NN manifold misses some of the other sample's points.)"""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 8)) * 10
    real = centres[np.arange(500) % 10] + rng.normal(size=(500, 8))
    collapsed = centres[np.arange(500) % 2] + rng.normal(size=(500, 8))
    faithful = centres[np.arange(500) % 10] + rng.normal(size=(500, 8))
    p_c, r_c = precision_recall(real, collapsed)
    p_f, r_f = precision_recall(real, faithful)
    assert p_c > 0.8 and p_f > 0.8 and abs(p_c - p_f) < 0.05
    assert r_c < 0.25 and r_f > 0.75


def test_bad_k():
    with pytest.raises(ValueError, match="k must be"):
        kth_neighbour_radii(np.zeros((3, 2)), 3)

"""The Fréchet distance against scipy's sqrtm formula and closed forms for Gaussians."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from diffusion_notes.quality import feature_statistics, frechet_distance, frechet_distance_of_features


def scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The oracle: the textbook formula with scipy's general matrix square root of the product."""
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def random_features(rng, n, d, rank=None):
    mix = rng.normal(size=(rank or d, d))
    return rng.normal(size=(n, rank or d)) @ mix + rng.normal(size=d)


@pytest.mark.parametrize("d", [1, 5, 32])
def test_matches_scipy_sqrtm_formula(d):
    rng = np.random.default_rng(d)
    s1 = feature_statistics(random_features(rng, 400, d))
    s2 = feature_statistics(random_features(rng, 300, d) * 1.3 + 0.2)
    assert frechet_distance(*s1, *s2) == pytest.approx(scipy_frechet(*s1, *s2), rel=1e-9, abs=1e-9)


def test_numpy_cov_statistics():
    x = np.random.default_rng(0).normal(size=(50, 4))
    mu, sigma = feature_statistics(x.astype(np.float32))
    assert mu.dtype == np.float64 and np.allclose(sigma, np.cov(x, rowvar=False)) and np.allclose(mu, x.mean(0))


def test_commuting_diagonal_closed_form():
    """Diagonal Σ commute: Tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^1/2) = Σ_i (√a_i - √b_i)²."""
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # and rotating both Gaussians by the same orthogonal matrix changes nothing
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-10)


def test_one_dimensional_closed_form():
    """In 1-D the 2-Wasserstein distance squared is (μ1 - μ2)² + (σ1 - σ2)²."""
    assert frechet_distance([1.0], [[4.0]], [-0.5], [[0.25]]) == pytest.approx(1.5**2 + 1.5**2, rel=1e-14)


def test_singular_rank_one_closed_form():
    """Σ1 = uuᵀ, Σ2 = vvᵀ (both singular, not commuting): Σ1Σ2 = (u·v) u vᵀ has the one non-zero
    eigenvalue (u·v)², so d = |u|² + |v|² - 2|u·v|."""
    rng = np.random.default_rng(2)
    u, v = rng.normal(size=6), rng.normal(size=6)
    expected = u @ u + v @ v - 2 * abs(u @ v)
    got = frechet_distance(np.zeros(6), np.outer(u, u), np.zeros(6), np.outer(v, v))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_near_singular_features_stay_finite_and_agree():
    """Rank-deficient features (more dimensions than directions, as with dead ReLU units): no NaN,
    no complex numbers, the distance of a set to itself is 0, and the scaled closed form holds."""
    rng = np.random.default_rng(3)
    x = random_features(rng, 200, 20, rank=5)
    mu, sigma = feature_statistics(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9
    # Σ2 = c² Σ1, μ2 = μ1: d = (1 - c)² Tr Σ1
    c = 1.7
    assert frechet_distance(mu, sigma, mu, c**2 * sigma) == pytest.approx((1 - c) ** 2 * np.trace(sigma), rel=1e-8)


def test_sampled_gaussians_approach_closed_form():
    rng = np.random.default_rng(4)
    a, b = np.array([1.0, 2.0, 0.5]), np.array([0.5, 2.0, 1.5])
    x = rng.normal(size=(200_000, 3)) * np.sqrt(a)
    y = rng.normal(size=(200_000, 3)) * np.sqrt(b) + np.array([1.0, 0.0, 0.0])
    expected = 1.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance_of_features(x, y) == pytest.approx(expected, rel=0.02)


def test_symmetric():
    rng = np.random.default_rng(5)
    s1, s2 = feature_statistics(random_features(rng, 100, 8)), feature_statistics(random_features(rng, 100, 8))
    assert frechet_distance(*s1, *s2) == pytest.approx(frechet_distance(*s2, *s1), rel=1e-10)


def test_bad_inputs():
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 3)))

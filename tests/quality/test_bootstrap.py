"""The bootstrap's spread against the closed form for the mean: σ/√N."""

from __future__ import annotations

import numpy as np
import pytest

from diffusion_notes.quality import bootstrap


def test_spread_of_a_mean_matches_sigma_over_sqrt_n():
    x = np.random.default_rng(0).normal(scale=2.0, size=400)
    result = bootstrap(np.mean, x, n_resamples=2000, seed=1)
    assert result.value == x.mean()
    assert result.std == pytest.approx(x.std() / np.sqrt(len(x)), rel=0.08)
    assert result.mean == pytest.approx(x.mean(), abs=3 * result.std / np.sqrt(2000) + 1e-3)


def test_reproducible_and_rows_resampled_together():
    x = np.random.default_rng(1).normal(size=(50, 3))
    a = bootstrap(lambda rows: float(rows[:, 0].sum() - rows[:, 1].sum()), x, n_resamples=20, seed=3)
    b = bootstrap(lambda rows: float(rows[:, 0].sum() - rows[:, 1].sum()), x, n_resamples=20, seed=3)
    assert a == b and a.std > 0


def test_bad_inputs():
    with pytest.raises(ValueError):
        bootstrap(np.mean, np.zeros(1))
    with pytest.raises(ValueError):
        bootstrap(np.mean, np.zeros(5), n_resamples=1)


def test_paired_spread_matches_the_closed_form_of_a_paired_mean_difference():
    """Rows share a large common part: the spread of mean(a) - mean(b) is sd(a - b)/sqrt(N), far below the unpaired one."""
    from diffusion_notes.quality import paired_bootstrap

    rng = np.random.default_rng(2)
    shared = rng.normal(scale=3.0, size=500)
    a, b = shared + rng.normal(scale=0.5, size=500) + 0.1, shared + rng.normal(scale=0.5, size=500)
    result = paired_bootstrap(np.mean, a, b, n_resamples=2000, seed=1)
    assert result.value == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    assert result.std == pytest.approx((a - b).std() / np.sqrt(500), rel=0.08)
    unpaired = np.hypot(bootstrap(np.mean, a, n_resamples=500).std, bootstrap(np.mean, b, n_resamples=500).std)
    assert result.std < unpaired / 4
    with pytest.raises(ValueError, match="same number"):
        paired_bootstrap(np.mean, a, b[:10])

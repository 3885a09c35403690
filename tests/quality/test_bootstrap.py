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

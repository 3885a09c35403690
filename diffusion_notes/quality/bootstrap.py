r"""Error bars by the bootstrap (Efron 1979): recompute a statistic on resamples of the data.

``bootstrap(statistic, samples)`` draws ``n_resamples`` sets of ``len(samples)`` rows *with
replacement* from ``samples`` (a generated set's features, say), evaluates ``statistic`` on each and
reports the spread (standard deviation) of those values: how much the number would move had another
set of the same size been drawn. Only the generated set is resampled; a fixed reference (the training
digits' statistics) stays fixed inside ``statistic``.

:func:`paired_bootstrap` is for a *difference* between two sets whose rows are paired (two samplers started
from the same :math:`x_T` for row i): it resamples the same row indices in both, so what the pairs share
cancels, and the spread of the difference is often much smaller than the two spreads combined.

For the Fréchet distance, resampling with replacement repeats rows, which lowers the effective sample
size and *raises* the distance a little (it is biased upward at small N): the spread is the useful
number, the bootstrap mean is not a better estimate than ``value``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Bootstrap", "bootstrap", "paired_bootstrap"]


@dataclass(frozen=True)
class Bootstrap:
    """``value``: the statistic on the data as given; ``mean`` and ``std``: over the resamples."""

    value: float
    mean: float
    std: float
    n_resamples: int

    def __str__(self) -> str:
        return f"{self.value:.3g} ± {self.std:.2g}"


def bootstrap(statistic: Callable[[np.ndarray], float], samples, n_resamples: int = 200, seed: int = 0) -> Bootstrap:
    """``statistic(samples)`` and its bootstrap spread over ``n_resamples`` resamples of the rows of ``samples``."""
    x = np.asarray(samples)
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"samples must have at least 2 rows, got shape {x.shape}")
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be at least 2, got {n_resamples}")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(x[rng.integers(0, x.shape[0], x.shape[0])]) for _ in range(n_resamples)], dtype=np.float64)
    return Bootstrap(float(statistic(x)), float(values.mean()), float(values.std(ddof=1)), n_resamples)


def paired_bootstrap(statistic: Callable[[np.ndarray], float], samples_a, samples_b, n_resamples: int = 200,
                     seed: int = 0) -> Bootstrap:
    """``statistic(a) - statistic(b)`` and its spread, resampling the same rows of both (rows paired, same count)."""
    a, b = np.asarray(samples_a), np.asarray(samples_b)
    if a.shape[0] != b.shape[0] or a.shape[0] < 2:
        raise ValueError(f"paired samples need the same number (>= 2) of rows, got {a.shape[0]} and {b.shape[0]}")
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be at least 2, got {n_resamples}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        rows = rng.integers(0, a.shape[0], a.shape[0])
        values.append(statistic(a[rows]) - statistic(b[rows]))
    values = np.array(values, dtype=np.float64)
    return Bootstrap(float(statistic(a) - statistic(b)), float(values.mean()), float(values.std(ddof=1)), n_resamples)

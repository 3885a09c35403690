r"""Improved precision and recall (Kynkäänniemi et al. 2019, Sec. 2, Eq. 1-2): k-NN manifolds in feature space.

Each set of feature vectors :math:`\Phi` stands for a manifold: the union of balls centred on its
points, each ball's radius the distance to that point's k-th nearest neighbour in the same set
(:func:`kth_neighbour_radii`). Then

.. math:: f(\phi, \Phi) = 1 \iff \exists\,\phi' \in \Phi:\ \lVert\phi - \phi'\rVert_2 \le \lVert\phi' - \mathrm{NN}_k(\phi', \Phi)\rVert_2,

.. math:: \text{precision} = \tfrac{1}{|\Phi_g|}\sum_{\phi_g} f(\phi_g, \Phi_r), \qquad
          \text{recall} = \tfrac{1}{|\Phi_r|}\sum_{\phi_r} f(\phi_r, \Phi_g).

Precision: how many generated samples fall where real ones are (fidelity). Recall: how much of the
real data the generated set covers (diversity). A mode-collapsed generator draws only a few kinds of
sample: high precision, low recall. k = 3 is the paper's default (its NVlabs code
``ManifoldEstimator(nhood_sizes=[3])``, which also counts a distance equal to the radius as inside).
"""

from __future__ import annotations

import numpy as np

__all__ = ["kth_neighbour_radii", "in_manifold", "precision_recall"]


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)), float64 (||a||^2 + ||b||^2 - 2ab, clipped at 0)."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(sq, 0.0, None))


def _as_features(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"{name} must be a finite (N, D) array, got shape {x.shape}")
    return x


def kth_neighbour_radii(features, k: int = 3) -> np.ndarray:
    """For every point of ``features`` (N, D), the distance to its k-th nearest *other* point (N,)."""
    x = _as_features(features, "features")
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be from 1 to N - 1 = {x.shape[0] - 1}, got {k}")
    d = _distances(x, x)
    np.fill_diagonal(d, np.inf)  # a point is not its own neighbour
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def in_manifold(queries, support, k: int = 3) -> np.ndarray:
    r""":math:`f(\phi, \Phi)` for each query (boolean (M,)): inside some ball of ``support``'s k-NN manifold."""
    q, s = _as_features(queries, "queries"), _as_features(support, "support")
    radii = kth_neighbour_radii(s, k)
    return (_distances(q, s) <= radii[None, :]).any(axis=1)


def precision_recall(real_features, fake_features, k: int = 3) -> tuple[float, float]:
    """``(precision, recall)`` of the generated ``fake_features`` against ``real_features`` (Eq. 1-2)."""
    precision = float(in_manifold(fake_features, real_features, k).mean())
    recall = float(in_manifold(real_features, fake_features, k).mean())
    return precision, recall

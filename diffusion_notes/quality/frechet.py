r"""The Fréchet distance between two sets of feature vectors (Heusel et al. 2017, Eq. 6).

Fit a Gaussian to each set, :math:`\mathcal N(\mu_1, \Sigma_1)` and :math:`\mathcal N(\mu_2, \Sigma_2)`; their
Fréchet (2-Wasserstein) distance squared is

.. math:: d^2 = \lVert \mu_1 - \mu_2 \rVert^2 + \operatorname{Tr}\big(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2}\big).

FID is this distance on Inception-v3 pool features; what it measures depends entirely on the
features (see :mod:`.features`). pytorch-fid and clean-fid compute the trace term with
``scipy.linalg.sqrtm(sigma1 @ sigma2)``: the square root of a *non-symmetric* product, which can
come back complex or inaccurate when the covariances are (near-)singular, and which they repair by
adding :math:`10^{-6} I` and dropping imaginary parts. Here only symmetric matrices are decomposed:

* :math:`\Sigma_1\Sigma_2 = \Sigma_1^{1/2}(\Sigma_1^{1/2}\Sigma_2)` and :math:`M = \Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}`
  share their non-zero eigenvalues (:math:`XY` and :math:`YX` always do), so
  :math:`\operatorname{Tr}(\Sigma_1\Sigma_2)^{1/2} = \sum_i \sqrt{\lambda_i(M)}`, and :math:`M` is symmetric
  positive semi-definite: ``numpy.linalg.eigh`` diagonalises it stably, whether or not either
  :math:`\Sigma` is invertible (no ridge is added; a singular :math:`\Sigma` is fine).
* Round-off makes a zero eigenvalue (of :math:`\Sigma_1` or :math:`M`) come out as, say, :math:`\pm 10^{-17}`,
  and :math:`\sqrt{10^{-17}}` is not small. Eigenvalues below numpy's rank tolerance
  (``numpy.linalg.matrix_rank``: :math:`D\,\varepsilon_{\text{float64}}\,\lambda_{\max}`), negative ones included,
  are indistinguishable from 0 and are set to 0 before the square root. An eigenvalue more negative than
  ``1e-8`` times the largest is not round-off: the input was not a covariance matrix, and is an error.
"""

from __future__ import annotations

import numpy as np

__all__ = ["feature_statistics", "frechet_distance", "frechet_distance_of_features", "sqrtm_psd"]

#: Eigenvalues below -NEGATIVE_TOLERANCE x the largest are not round-off: the matrix was not PSD.
NEGATIVE_TOLERANCE = 1e-8


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)``: the mean (D,) and the unbiased covariance (D, D) of ``features`` (N, D), in float64.

    The covariance divides by N - 1, as ``numpy.cov`` (and pytorch-fid's ``np.cov(act, rowvar=False)``) does.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be an (N, D) array with N >= 2 samples, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _clipped_eigenvalues(matrix: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix; eigenvalues within round-off of 0 set to 0."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    scale = max(float(np.abs(values).max(initial=0.0)), np.finfo(np.float64).tiny)
    if values.min(initial=0.0) < -NEGATIVE_TOLERANCE * scale:
        raise ValueError(f"{name} is not positive semi-definite (eigenvalue {values.min():.3g}); "
                         "is it a covariance matrix?")
    tolerance = matrix.shape[0] * np.finfo(np.float64).eps * scale  # numpy.linalg.matrix_rank's
    return np.where(values > tolerance, values, 0.0), vectors


def sqrtm_psd(sigma: np.ndarray) -> np.ndarray:
    r"""The symmetric square root :math:`\Sigma^{1/2}` of a symmetric PSD matrix: :math:`V\,\mathrm{diag}(\sqrt\lambda)\,V^\top`."""
    values, vectors = _clipped_eigenvalues(np.asarray(sigma, dtype=np.float64), "sigma")
    return (vectors * np.sqrt(values)) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    r"""Heusel et al. 2017, Eq. 6: :math:`\lVert\mu_1-\mu_2\rVert^2 + \operatorname{Tr}(\Sigma_1+\Sigma_2-2(\Sigma_1\Sigma_2)^{1/2})`, float64.

    The trace of :math:`(\Sigma_1\Sigma_2)^{1/2}` is the sum of the square roots of the eigenvalues of
    the symmetric :math:`\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}` (see the module docstring). pytorch-fid's and
    clean-fid's name: ``calculate_frechet_distance`` / ``frechet_distance(mu1, sigma1, mu2, sigma2)``.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64)), np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}")
    for name, array in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contains NaN or inf")
    sqrt_sigma1 = sqrtm_psd(sigma1)
    m = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    eigenvalues, _ = _clipped_eigenvalues(m, "sigma1^1/2 sigma2 sigma1^1/2")
    tr_covmean = float(np.sqrt(eigenvalues).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance_of_features(features1, features2) -> float:
    """:func:`frechet_distance` of the Gaussians fitted to two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))

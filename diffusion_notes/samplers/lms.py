r"""Linear multistep (LMS) in σ: Adams-Bashforth on the non-uniform σ grid (k-diffusion's ``sample_lms``).

The slope history :math:`d_i, d_{i-1}, \dots` (newest first) is interpolated by the Lagrange polynomial
through :math:`(\sigma_{i-j}, d_{i-j})` and integrated exactly over the step:

.. math::
    \bar x_{i+1} = \bar x_i + \sum_{j=0}^{k-1} c_{ij}\,d_{i-j},\qquad
    c_{ij} = \int_{\sigma_i}^{\sigma_{i+1}} \prod_{m \ne j} \frac{\tau - \sigma_{i-m}}{\sigma_{i-j} - \sigma_{i-m}}\,d\tau,

with :math:`k = \min(i + 1, \text{order})` (order 4 by default). On a uniform grid the :math:`c_{ij}` are
the classical Adams-Bashforth coefficients of PLMS (:data:`~diffusion_notes.samplers.plms.ADAMS_BASHFORTH`).
"""

from __future__ import annotations

import numpy as np

from .registry import SIGMA_GRID, Step, register
from .sigma import denoise, to_d, x_bar, x_vp

__all__ = ["lms_coefficient", "lms_step", "sample_lms"]


def lms_coefficient(sigmas, i: int, j: int, order: int) -> float:
    r""":math:`c_{ij}`: the integral over :math:`[\sigma_i, \sigma_{i+1}]` of the j-th Lagrange basis polynomial on
    :math:`\sigma_i, \dots, \sigma_{i-order+1}`, computed exactly (polynomial antiderivative).

    k-diffusion: ``linear_multistep_coeff`` (scipy ``quad``); diffusers: ``LMSDiscreteScheduler.get_lms_coefficient``."""
    nodes = [float(sigmas[i - m]) for m in range(order)]
    basis = np.polynomial.Polynomial([1.0])
    for m in range(order):
        if m != j:
            basis = basis * np.polynomial.Polynomial([-nodes[m], 1.0]) / (nodes[j] - nodes[m])
    antiderivative = basis.integ()
    return float(antiderivative(float(sigmas[i + 1])) - antiderivative(nodes[0]))


def lms_step(x_bar_, ds, sigmas, i: int):
    r""":math:`\bar x_{i+1} = \bar x_i + \sum_j c_{ij}\,d_{i-j}`, ``ds`` the slopes oldest first (``len(ds)`` = the order used)."""
    order = len(ds)
    return x_bar_ + sum(lms_coefficient(sigmas, i, j, order) * d for j, d in enumerate(reversed(ds)))


@register("lms", "LMS", "linear multistep (Adams-Bashforth of order up to 4) on the sigma grid",
          options={"order": 4}, grid_defaults=SIGMA_GRID)
def sample_lms(model, x, grid, noise, order: int = 4):
    """LMS over the grid. k-diffusion ``sample_lms``; diffusers ``LMSDiscreteScheduler``."""
    ds = []
    for i in range(grid.num_steps):
        t, sigma, sigma_next = float(grid.timesteps[i]), float(grid.sigmas[i]), float(grid.sigmas[i + 1])
        xb = x_bar(x, sigma)
        denoised = denoise(model, xb, sigma, t)
        ds = [*ds, to_d(xb, sigma, denoised)][-order:]
        x = x_vp(lms_step(xb, ds, grid.sigmas, i), sigma_next)
        yield Step(i, t, sigma, x, denoised)

r"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) and a free corrector (UniC), the B(h) = e^h - 1 variant ("bh2").

In :math:`\lambda = -\log\sigma` with :math:`h = \lambda_{i+1} - \lambda_i` and the denoised history
:math:`D_i = m_0, D_{i-1}, \dots` at :math:`\lambda_{i-k}`, :math:`r_k = (\lambda_{i-k} - \lambda_i)/h`,
:math:`\Delta_k = (D_{i-k} - D_i)/r_k`, UniP of order p (Zhao et al. 2023 Alg. 2, data prediction) is

.. math::
    \bar x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}\bar x_i - (e^{-h} - 1)\,D_i - B(h)\sum_{k=1}^{p-1}\rho_k\,\Delta_k,\qquad B(h) = e^{-h} - 1 ,

where :math:`\rho` solves :math:`R_p\,\rho = g`, :math:`(R_p)_{jk} = r_k^{\,j-1}`,
:math:`g_j = j!\,\varphi_{j+1}(-h)\,(-h)^{j}/B(h)` (the Taylor coefficients of the exponential integrator;
:math:`\rho = \frac12` for p = 2). UniC re-does the step that led to :math:`\bar x_i` once :math:`D_i` is known
(it costs no model call): the same formula from :math:`\bar x_{i-1}` with :math:`D_i` appended as the newest
point at :math:`r = 1`. The final step (to :math:`\sigma = 0`) is first order and gives :math:`D_{N-1}`.
"""

from __future__ import annotations

import math

import numpy as np

from .registry import SIGMA_GRID, Step, register
from .sigma import denoise, x_bar, x_vp

__all__ = ["unipc_coefficients", "unipc_bh2_update", "sample_unipc"]


def unipc_coefficients(rks, h: float, order: int, corrector: bool) -> np.ndarray:
    r"""The weights :math:`\rho` of UniP (``corrector=False``) or UniC: :math:`R\rho = g` with B(h) = e^{-h} - 1 ("bh2").

    ``rks``: :math:`r_1, \dots, r_{p-1}` (the predictor's) followed by 1. diffusers: the ``R``, ``b``, ``rhos_p`` /
    ``rhos_c`` of ``UniPCMultistepScheduler.multistep_uni_p_bh_update`` / ``multistep_uni_c_bh_update``."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    B_h = math.expm1(hh)
    factorial_i = 1
    R, b = [], []
    for i in range(1, order + 1):
        R.append(np.asarray(rks, dtype=np.float64) ** (i - 1))
        b.append(h_phi_k * factorial_i / B_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    R, b = np.stack(R), np.asarray(b)
    if corrector:
        return np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
    if order == 1:
        return np.zeros(0)
    return np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])


def unipc_bh2_update(x_bar_, sigma: float, sigma_next: float, history, order: int, denoised_next=None):
    r"""One UniP step from level :math:`\sigma` to :math:`\sigma_{next}` (or, with ``denoised_next``, the UniC
    correction of that step). ``history``: ``[(sigma_k, D_k), ...]`` newest first, ``history[0]`` at ``sigma``.

    diffusers: ``UniPCMultistepScheduler.multistep_uni_p_bh_update`` / ``multistep_uni_c_bh_update`` (``bh2``, ``predict_x0``)."""
    m0 = history[0][1]
    if sigma_next == 0:  # h = infinity: the first-order limit is the denoised value itself
        return m0
    if sigma_next == sigma:  # a zero-length last step (grid ending at alphas_cumprod[0]): nothing to do
        return x_bar_
    h = math.log(sigma / sigma_next)
    rks = [math.log(sigma / s_k) / h for s_k, _ in history[1:order]]
    d1s = [(m_k - m0) / r_k for r_k, (_, m_k) in zip(rks, history[1:order])]
    rhos = unipc_coefficients([*rks, 1.0], h, order, corrector=denoised_next is not None)
    B_h = math.expm1(-h)
    x_next = (sigma_next / sigma) * x_bar_ - math.expm1(-h) * m0
    correction = sum(float(rho) * d1 for rho, d1 in zip(rhos, d1s)) if d1s else 0
    if denoised_next is not None:
        correction = correction + float(rhos[-1]) * (denoised_next - m0)
    return x_next - B_h * correction


@register("unipc", "UniPC", "UniPC (Zhao et al. 2023), bh2, order 2: multistep predictor plus a free corrector",
          options={"order": 2}, grid_defaults=SIGMA_GRID)
def sample_unipc(model, x, grid, noise, order: int = 2):
    """UniPC over the grid, as diffusers' default ``UniPCMultistepScheduler`` (``solver_order=2``, ``bh2``,
    ``lower_order_final``): order :math:`\\min(p, i + 1, N - i)` at step i, UniC on every level but the first."""
    N = grid.num_steps
    history = []  # (sigma, denoised), newest first
    last = None  # (x_bar at the previous level after its correction, the order of the step from it)
    for i in range(N):
        t, sigma, sigma_next = float(grid.timesteps[i]), float(grid.sigmas[i]), float(grid.sigmas[i + 1])
        xb = x_bar(x, sigma)
        denoised = denoise(model, xb, sigma, t)
        if last is not None:  # UniC: redo the step from the previous level with this D appended
            xb = unipc_bh2_update(last[0], float(grid.sigmas[i - 1]), sigma, history, last[1], denoised_next=denoised)
        history = [(sigma, denoised), *history][:order]
        this_order = min(order, N - i, i + 1)
        last = (xb, this_order)
        x = x_vp(unipc_bh2_update(xb, sigma, sigma_next, history, this_order), sigma_next)
        yield Step(i, t, sigma, x, denoised)

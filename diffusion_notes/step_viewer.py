r"""Watch a sampler: one self-contained HTML page with a slider over the steps of a run.

A sampler run of N steps visits the grid's levels ``0..N`` (:class:`~diffusion_notes.samplers.SamplingGrid`).
At level k the page shows the sampler's state :math:`x_k` and, for k < N, the step's estimate
:math:`\hat x_0` (what the network predicts from :math:`x_k`), next to the update that takes level k to
k + 1, written out twice: in symbols, and with this run's numbers (the timesteps, :math:`\bar\alpha` or
:math:`\sigma`, and the coefficients the sampler's step function multiplies by). The last frame shows the
sample itself. Everything is inside the one HTML string: the frames are small PNGs as ``data:`` URIs, the
player (slider, previous / play / next) is a few lines of plain JavaScript, and the formulas are HTML text;
nothing is fetched, so the page works offline, inside the book's pages and in a notebook's output (Jupyter runs
an output's script in a trusted notebook: a cell you ran yourself is; one opened untrusted shows the first frame).

The records come from the run itself: :func:`~diffusion_notes.sampling.sample` with
``return_trajectory=True`` (or the pipeline's ``Generation.trajectory``) gives :math:`x_k` and
:math:`\hat x_0` per step; :func:`step_records` reads the numbers from the same grid the sampler walked,
through the samplers' own helpers (:func:`~diffusion_notes.samplers.ddim_sigma`,
:func:`~diffusion_notes.samplers.ancestral_step`, :func:`~diffusion_notes.samplers.lms_coefficient`, ...).

Frames: images ``(B, C, H, W)`` in [-1, 1] (C = 1 or 3) are shown side by side; latents (C = 4, or any other C)
are shown channel by channel in the fixed range ±2.5, and with ``decode`` (the VAE) :math:`\hat x_0` and the
final sample are also shown as pictures. :math:`x_t` itself is not decoded: the decoder was trained on clean
latents only, and a noisy latent decodes to texture, not to a noisy picture. Point clouds ``(N, 2)`` (the
Gaussian mixture) are shown as 2-D histograms over one fixed square. Frames larger than ``max_side`` pixels
are downsampled, RGB frames are reduced to a 64-colour palette.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from .errors import SettingsError
from .samplers import (ADAMS_BASHFORTH, PRK_WARMUP_STEPS, SamplingGrid, ancestral_step, ddim_sigma, lms_coefficient,
                       unipc_coefficients)
from .sampling import SamplerSettings, Trajectory, sample

__all__ = ["StepRecord", "step_records", "StepViewer", "watch", "LATENT_RANGE"]

#: Latent channels are drawn with this fixed range (x_T ~ N(0, I); SD latents times 0.18215 have std near 1).
LATENT_RANGE = 2.5


# --------------------------------------------------------------------------------------------
# the numbers of each step
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRecord:
    """Step ``i`` of a run, from grid level ``i`` to ``i + 1``, with the numbers its update uses.

    ``t``, ``alpha_cumprod``, ``sigma``: level i (:math:`t`, :math:`\\bar\\alpha`, :math:`\\sigma`); ``*_next``: level i + 1.
    ``name``: the update rule and its source; ``lines``: the update in symbols and with numbers (HTML);
    ``coefficients``: the numbers themselves, by the names the sampler's code uses (``"sqrt(a_prev)"``).
    """

    i: int
    t: float
    t_next: float
    alpha_cumprod: float
    alpha_cumprod_next: float
    sigma: float
    sigma_next: float
    name: str
    lines: tuple[str, ...]
    coefficients: Mapping[str, float] = field(default_factory=dict)


def _num(v: float) -> str:
    """A number for the page: 4 significant digits (scientific only when tiny or huge), a true minus sign."""
    v = float(v)
    if v == 0:
        return "0"
    if math.isinf(v):
        return "∞"
    return f"{v:.4g}".replace("-", "−")


def _t(t: float) -> str:
    return "end (ᾱ = 1)" if t < 0 else (f"{int(t)}" if float(t).is_integer() else f"{t:.2f}")


_MARKUP = [(re.compile(r"_\[([^\]]*)\]"), r"<sub>\1</sub>"), (re.compile(r"\^\[([^\]]*)\]"), r"<sup>\1</sup>"),
           (re.compile(r"_([0-9A-Za-z])"), r"<sub>\1</sub>")]


def _html(line: str) -> str:
    """A formula line written with ``_i`` / ``_[i+1]`` for subscripts and ``^[−h]`` for superscripts -> HTML."""
    line = html.escape(line, quote=False)
    for pattern, replacement in _MARKUP:
        line = pattern.sub(replacement, line)
    return line


def _signed(coefficient: float, term: str) -> str:
    """`` + 0.5·term`` or `` − 0.5·term``."""
    return f" {'−' if coefficient < 0 else '+'} {_num(abs(coefficient))}·{term}"


# Each formula function returns (the rule's name, its lines in the markup of _html, its coefficients by the
# names the sampler's code uses). x̂_0 is the step's pred_x0 (k-diffusion's denoised D_i).


def _ddim_lines(a_t: float, a_prev: float, sigma_t: float | None, eps: str) -> tuple[list[str], dict]:
    """DDIM Eq. 12 with its numbers (``eps``: the noise estimate it is given, ε̂ or PLMS's ε̂′); ``sigma_t=None``:
    the transfer φ of PNDM Eq. 9, which has no noise term."""
    c = {"a_t": a_t, "a_prev": a_prev, "sqrt(a_t)": a_t**0.5, "sqrt(1-a_t)": (1 - a_t) ** 0.5, "sqrt(a_prev)": a_prev**0.5}
    lines = [f"x̂_0 = (x_t − √(1 − ᾱ_t)·{eps}) / √ᾱ_t = (x_t − {_num(c['sqrt(1-a_t)'])}·{eps}) / {_num(c['sqrt(a_t)'])}"]
    if sigma_t is None:
        c["sqrt(1-a_prev)"] = (1 - a_prev) ** 0.5
        return lines + [f"x_[prev] = √ᾱ_[prev]·x̂_0 + √(1 − ᾱ_[prev])·{eps}",
                        f"x_[prev] = {_num(c['sqrt(a_prev)'])}·x̂_0 + {_num(c['sqrt(1-a_prev)'])}·{eps}"], c
    c["sqrt(1-a_prev-sigma_t^2)"] = max(1 - a_prev - sigma_t**2, 0.0) ** 0.5
    c["sigma_t"] = sigma_t
    return lines + [f"x_[prev] = √ᾱ_[prev]·x̂_0 + √(1 − ᾱ_[prev] − σ_t²)·{eps} + σ_t·z",
                    f"x_[prev] = {_num(c['sqrt(a_prev)'])}·x̂_0 + {_num(c['sqrt(1-a_prev-sigma_t^2)'])}·{eps}"
                    f" + {_num(sigma_t)}·z"], c


def _ddim(grid, i, options):
    a_t, a_prev = float(grid.alphas_cumprod[i]), float(grid.alphas_cumprod[i + 1])
    eta = float(options.get("eta", 0.0))
    sigma_t = float(ddim_sigma(grid.alphas_cumprod[i], grid.alphas_cumprod[i + 1], eta))
    lines, c = _ddim_lines(a_t, a_prev, sigma_t, "ε̂")
    noise = f"σ_t = η·√((1 − ᾱ_[prev])/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_[prev]) = {_num(sigma_t)}  (Eq. 16, η = {_num(eta)})"
    return "DDIM, DDIM Eq. 12", [noise, *lines], {"eta": eta, **c}


def _ddpm(grid, i, options):
    a_t, a_prev = float(grid.alphas_cumprod[i]), float(grid.alphas_cumprod[i + 1])
    beta = 1 - a_t / a_prev
    c_x0, c_xt = a_prev**0.5 * beta / (1 - a_t), (1 - beta) ** 0.5 * (1 - a_prev) / (1 - a_t)
    posterior = options.get("ddpm_variance", "posterior") == "posterior"
    last = i + 1 == grid.num_steps
    std = 0.0 if last else (beta * (1 - a_prev) / (1 - a_t) if posterior else beta) ** 0.5
    clip = " clipped to [−1, 1]" if options.get("clip_denoised") else ""
    lines = [f"x̂_0 = (x_t − {_num((1 - a_t) ** 0.5)}·ε̂) / {_num(a_t**0.5)}{clip}",
             f"β = 1 − ᾱ_t/ᾱ_[prev] = {_num(beta)}",
             f"μ̃ = √ᾱ_[prev]·β/(1 − ᾱ_t)·x̂_0 + √(1 − β)·(1 − ᾱ_[prev])/(1 − ᾱ_t)·x_t"
             f" = {_num(c_x0)}·x̂_0 + {_num(c_xt)}·x_t  (Eq. 7)",
             f"x_[prev] = μ̃ + {_num(std)}·z  " + ("(last step: no noise, Alg. 2)" if last else f"(σ² = {'β̃' if posterior else 'β'})")]
    return "DDPM, DDPM Eq. 6-7 and Alg. 2", lines, {"a_t": a_t, "a_prev": a_prev, "beta": beta, "coef_x0": c_x0,
                                                    "coef_xt": c_xt, "noise_std": std}


def _adams_bashforth_line(history: int) -> tuple[str, dict]:
    order = min(history + 1, 4)
    weights, denominator = ADAMS_BASHFORTH[order]
    names = ["ε̂_t", "ε̂_[t+δ]", "ε̂_[t+2δ]", "ε̂_[t+3δ]"]
    terms = "".join(f"{'' if k == 0 else (' − ' if w < 0 else ' + ')}{abs(w)}·{n}" for k, (w, n) in enumerate(zip(weights, names)))
    line = (f"ε̂′ = ({terms}) / {denominator}  (PNDM Eq. 12, Adams-Bashforth order {order}; "
            "ε̂_[t+kδ]: the raw output of the k-th previous step)")
    keys = ["w(e_t)", "w(e_t+δ)", "w(e_t+2δ)", "w(e_t+3δ)"]
    return line, {k: w / denominator for k, w in zip(keys, weights)}


def _plms(grid, i, options, history=None):
    a_t, a_prev = float(grid.alphas_cumprod[i]), float(grid.alphas_cumprod[i + 1])
    history = min(i, 3) if history is None else history
    if history == 0:
        t_next = float(grid.timesteps[min(i + 1, grid.num_steps - 1)])
        first = (f"ε̂′ = (ε̂(x_t, t) + ε̂(x′, {_t(t_next)}))/2, x′ = the DDIM step with ε̂  "
                 "(pseudo improved Euler: 2 model calls)")
        weights = {"w(e_t)": 0.5, "w(e(x', t_next))": 0.5}
    else:
        first, weights = _adams_bashforth_line(history)
    lines, c = _ddim_lines(a_t, a_prev, None, "ε̂′")
    return "PLMS, PNDM Eq. 12 then the DDIM transfer (Eq. 9)", [first, *lines], {**weights, **c}


def _pndm(grid, i, options):
    if i >= min(PRK_WARMUP_STEPS, grid.num_steps):
        name, lines, c = _plms(grid, i, options, history=3)
        return name.replace("PLMS,", "PNDM (linear multi-step),"), lines, c
    t = float(grid.timesteps[i])
    t_prev = int(grid.timesteps[i + 1]) if i + 1 < grid.num_steps else 0
    t_mid = int(t) - (int(t) - t_prev) // 2
    a_t, a_prev, a_mid = float(grid.alphas_cumprod[i]), float(grid.alphas_cumprod[i + 1]), grid.alpha_at(t_mid)
    lines, c = _ddim_lines(a_t, a_prev, None, "ε̂′")
    prk = [f"e_1 = ε̂(x_t, {_t(t)}), e_2 = ε̂(φ(x_t, e_1), {t_mid}), e_3 = ε̂(φ(x_t, e_2), {t_mid}), "
           f"e_4 = ε̂(φ(x_t, e_3), {t_prev})  (midpoint ᾱ = {_num(a_mid)})",
           "ε̂′ = (e_1 + 2e_2 + 2e_3 + e_4)/6  (PNDM Eq. 13, pseudo Runge-Kutta warm-up: 4 model calls)"]
    return "PNDM warm-up, PNDM Eq. 13", [*prk, *lines], {"t_mid": float(t_mid), "a_mid": a_mid, **c}


def _sigma_lines(sigma: float, sigma_next: float, slope: bool = True) -> tuple[list[str], dict]:
    """x̄ from x_t (and, with ``slope``, the ODE's slope d_i, Karras Eq. 3) with their numbers."""
    c = {"sigma": sigma, "sigma_next": sigma_next, "sqrt(sigma^2+1)": math.sqrt(sigma**2 + 1),
         "sqrt(sigma_next^2+1)": math.sqrt(sigma_next**2 + 1)}
    line = f"x̄_i = √(σ_i² + 1)·x_t = {_num(c['sqrt(sigma^2+1)'])}·x_t"
    if slope:
        line += f",  d_i = (x̄_i − x̂_0)/σ_i = (x̄_i − x̂_0)/{_num(sigma)}"
    return [line], c


def _back_to_vp(sigma_next: float) -> str:
    return f"x_t at the next level = x̄_[i+1] / √(σ_[i+1]² + 1) = x̄_[i+1] / {_num(math.sqrt(sigma_next**2 + 1))}"


def _sigmas(grid, i):
    return float(grid.sigmas[i]), float(grid.sigmas[i + 1])


def _euler(grid, i, options):
    sigma, sigma_next = _sigmas(grid, i)
    lines, c = _sigma_lines(sigma, sigma_next)
    lines += [f"x̄_[i+1] = x̄_i + (σ_[i+1] − σ_i)·d_i = x̄_i{_signed(sigma_next - sigma, 'd_i')}", _back_to_vp(sigma_next)]
    return "Euler, Karras et al. 2022 Alg. 2 (no churn)", lines, {**c, "sigma_next-sigma": sigma_next - sigma}


def _heun(grid, i, options):
    sigma, sigma_next = _sigmas(grid, i)
    lines, c = _sigma_lines(sigma, sigma_next)
    dt = sigma_next - sigma
    if sigma_next == 0:
        lines += [f"x̄_[i+1] = x̄_i{_signed(dt, 'd_i')}  (to σ = 0: an Euler step, 1 model call)"]
    else:
        lines += [f"x̄′ = x̄_i{_signed(dt, 'd_i')},  x̄_[i+1] = x̄_i + (σ_[i+1] − σ_i)·(d_i + d(x̄′; σ_[i+1]))/2",
                  f"x̄_[i+1] = x̄_i{_signed(dt / 2, '(d_i + d′)')}  (2 model calls)"]
    return "Heun, Karras et al. 2022 Alg. 1", [*lines, _back_to_vp(sigma_next)], {**c, "sigma_next-sigma": dt}


def _euler_a(grid, i, options):
    sigma, sigma_next = _sigmas(grid, i)
    eta, s_noise = float(options.get("eta", 1.0)), float(options.get("s_noise", 1.0))
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
    noise = s_noise * sigma_up if sigma_next > 0 and sigma_up > 0 else 0.0
    lines, c = _sigma_lines(sigma, sigma_next)
    lines += [f"σ_[up] = min(σ_[i+1], η·√(σ_[i+1]²(σ_i² − σ_[i+1]²)/σ_i²)) = {_num(sigma_up)},"
              f"  σ_[down] = √(σ_[i+1]² − σ_[up]²) = {_num(sigma_down)}",
              f"x̄_[i+1] = x̄_i + (σ_[down] − σ_i)·d_i + s_[noise]·σ_[up]·z"
              f" = x̄_i{_signed(sigma_down - sigma, 'd_i')} + {_num(noise)}·z", _back_to_vp(sigma_next)]
    return "Euler ancestral (k-diffusion sample_euler_ancestral)", lines, {
        **c, "eta": eta, "sigma_down": sigma_down, "sigma_up": sigma_up, "sigma_down-sigma": sigma_down - sigma,
        "noise_std": noise}


def _lms(grid, i, options):
    sigma, sigma_next = _sigmas(grid, i)
    order = min(i + 1, int(options.get("order", 4)))
    cs = [lms_coefficient(grid.sigmas, i, j, order) for j in range(order)]
    lines, c = _sigma_lines(sigma, sigma_next)
    terms = "".join(_signed(cj, f"d_[i−{j}]" if j else "d_i") for j, cj in enumerate(cs))
    lines += [f"x̄_[i+1] = x̄_i + Σ_j c_[ij]·d_[i−j],  c_[ij] = ∫ over [σ_i, σ_[i+1]] of the j-th Lagrange basis polynomial"
              f" (order {order})", f"x̄_[i+1] = x̄_i{terms}", _back_to_vp(sigma_next)]
    return "LMS, linear multistep in σ (k-diffusion sample_lms)", lines, {**c, **{f"c_i{j}": cj for j, cj in enumerate(cs)}}


def _first_order_line(sigma: float, sigma_next: float, d_name: str) -> tuple[float, float, float, str]:
    """DPM-Solver++'s first-order step (= DDIM) in x̄: (h, σ_[i+1]/σ_i, −(e^[−h] − 1), its line)."""
    h = math.log(sigma / sigma_next)
    ratio, weight = sigma_next / sigma, -math.expm1(-h)
    return h, ratio, weight, (f"x̄_[i+1] = (σ_[i+1]/σ_i)·x̄_i − (e^[−h] − 1)·{d_name} = {_num(ratio)}·x̄_i + {_num(weight)}·{d_name},"
                              f"  h = log(σ_i/σ_[i+1]) = {_num(h)}")


_TO_ZERO = "x̄_[i+1] = x̂_0  (to σ = 0: first order, the denoised value itself)"
_NO_STEP = "x̄_[i+1] = x̄_i  (a zero-length step)"


def _dpmpp_2m(grid, i, options):
    sigma, sigma_next = _sigmas(grid, i)
    lines, c = _sigma_lines(sigma, sigma_next, slope=False)
    name = "DPM++ 2M, Lu et al. 2022b Alg. 2"
    if sigma_next == 0:
        return name, [*lines, _TO_ZERO], c
    if sigma_next == sigma:
        return name, [*lines, _NO_STEP], c
    if i == 0:
        h, ratio, weight, line = _first_order_line(sigma, sigma_next, "D_i")
        return name, [*lines, line + "  (first order: no previous D)", _back_to_vp(sigma_next)], {
            **c, "h": h, "sigma_next/sigma": ratio, "-(exp(-h)-1)": weight, "w(D_i)": 1.0, "w(D_i-1)": 0.0}
    h, ratio, weight, line = _first_order_line(sigma, sigma_next, "D′")
    r = math.log(float(grid.sigmas[i - 1]) / sigma) / h
    w0, w1 = 1 + 1 / (2 * r), -1 / (2 * r)
    lines += [f"D′ = (1 + 1/2r)·D_i − (1/2r)·D_[i−1] = {_num(w0)}·D_i{_signed(w1, 'D_[i−1]')},"
              f"  r = h_[i−1]/h_i = {_num(r)}  (D = x̂_0 of each step)", line, _back_to_vp(sigma_next)]
    return name, lines, {**c, "h": h, "r": r, "sigma_next/sigma": ratio, "-(exp(-h)-1)": weight, "w(D_i)": w0, "w(D_i-1)": w1}


def _dpmpp_2m_sde(grid, i, options):
    sigma, sigma_next = _sigmas(grid, i)
    eta, s_noise = float(options.get("eta", 1.0)), float(options.get("s_noise", 1.0))
    lines, c = _sigma_lines(sigma, sigma_next, slope=False)
    name = "DPM++ 2M SDE (k-diffusion sample_dpmpp_2m_sde, midpoint)"
    if sigma_next == 0:
        return name, [*lines, _TO_ZERO], c
    if sigma_next == sigma:
        return name, [*lines, _NO_STEP], c
    h = math.log(sigma / sigma_next)
    ratio, weight = sigma_next / sigma * math.exp(-eta * h), -math.expm1(-h - eta * h)
    noise = sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise
    correction = 0.5 * weight / (math.log(float(grid.sigmas[i - 1]) / sigma) / h) if i > 0 else 0.0
    lines += ["x̄_[i+1] = (σ_[i+1]/σ_i)e^[−ηh]·x̄_i + (1 − e^[−(1+η)h])·(D_i + (D_i − D_[i−1])/2r)"
              " + σ_[i+1]√(1 − e^[−2ηh])·s_[noise]·z",
              f"x̄_[i+1] = {_num(ratio)}·x̄_i + {_num(weight)}·D_i + {_num(correction)}·(D_i − D_[i−1]) + {_num(noise)}·z,"
              f"  h = {_num(h)}" + ("  (first step: no correction)" if i == 0 else ""), _back_to_vp(sigma_next)]
    return name, lines, {**c, "h": h, "eta": eta, "coef_x": ratio, "coef_D": weight, "coef_D-D_prev": correction,
                         "noise_std": noise}


def _dpmpp_2s_a(grid, i, options):
    sigma, sigma_next = _sigmas(grid, i)
    eta, s_noise = float(options.get("eta", 1.0)), float(options.get("s_noise", 1.0))
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
    noise = s_noise * sigma_up if sigma_next > 0 and sigma_up > 0 else 0.0
    lines, c = _sigma_lines(sigma, sigma_next)
    lines += [f"σ_[down] = {_num(sigma_down)}, σ_[up] = {_num(sigma_up)}  (the ancestral split, η = {_num(eta)})"]
    c = {**c, "sigma_down": sigma_down, "sigma_up": sigma_up, "noise_std": noise}
    if sigma_down == 0:
        lines += ["x̄_[i+1] = x̄_i + (σ_[down] − σ_i)·d_i = x̂_0  (to σ = 0: an Euler step)"]
    else:
        h = math.log(sigma / sigma_down)
        sigma_s = sigma * math.exp(-h / 2)
        lines += [f"u = (σ_s/σ_i)·x̄_i − (e^[−h/2] − 1)·D_i = {_num(sigma_s / sigma)}·x̄_i + {_num(-math.expm1(-h / 2))}·D_i,"
                  f"  σ_s = √(σ_iσ_[down]) = {_num(sigma_s)}, h = {_num(h)}",
                  f"x̄_[i+1] = (σ_[down]/σ_i)·x̄_i − (e^[−h] − 1)·D(u; σ_s) + σ_[up]·z = {_num(sigma_down / sigma)}·x̄_i"
                  f" + {_num(-math.expm1(-h))}·D(u; σ_s) + {_num(noise)}·z  (2 model calls)"]
        c.update({"h": h, "sigma_s": sigma_s})
    return "DPM++ 2S a, Lu et al. 2022b Alg. 1 (r = 1/2) then ancestral noise", [*lines, _back_to_vp(sigma_next)], c


def _unipc(grid, i, options):
    sigma, sigma_next = _sigmas(grid, i)
    p = min(int(options.get("order", 2)), grid.num_steps - i, i + 1)
    lines, c = _sigma_lines(sigma, sigma_next, slope=False)
    c["order"] = float(p)
    if i > 0:
        lines.append("UniC first: x̄_i is recomputed from level i−1 with this step's D_i appended (no model call)")
    name = "UniPC (bh2), Zhao et al. 2023 Alg. 2"
    if sigma_next == 0:
        return name, [*lines, _TO_ZERO], c
    if sigma_next == sigma:
        return name, [*lines, _NO_STEP], c
    h, ratio, weight, line = _first_order_line(sigma, sigma_next, "D_i")
    c.update({"h": h, "sigma_next/sigma": ratio, "-(exp(-h)-1)": weight})
    if p == 1:
        lines.append(line + "  (order 1)")
    else:
        rks = [math.log(sigma / float(grid.sigmas[i - k])) / h for k in range(1, p)]
        rhos = unipc_coefficients([*rks, 1.0], h, p, corrector=False)
        B_h = math.expm1(-h)
        terms = "".join(_signed(-B_h * float(rho) / rk, f"(D_[i−{k + 1}] − D_i)") for k, (rho, rk) in enumerate(zip(rhos, rks)))
        values = ", ".join(f"r_{k + 1} = {_num(rk)}, ρ_{k + 1} = {_num(rho)}" for k, (rk, rho) in enumerate(zip(rks, rhos)))
        lines += ["x̄_[i+1] = (σ_[i+1]/σ_i)·x̄_i − (e^[−h] − 1)·D_i − B(h)·Σ_k ρ_k(D_[i−k] − D_i)/r_k",
                  f"x̄_[i+1] = {_num(ratio)}·x̄_i + {_num(weight)}·D_i{terms},  h = {_num(h)}, {values}  (order {p})"]
        c.update({f"rho_{k + 1}": float(rho) for k, rho in enumerate(rhos)})
        c.update({f"r_{k + 1}": rk for k, rk in enumerate(rks)})
    return name, [*lines, _back_to_vp(sigma_next)], c


def _lcm(grid, i, options):
    from .samplers.lcm import lcm_scalings

    t, a_t, a_prev = float(grid.timesteps[i]), float(grid.alphas_cumprod[i]), float(grid.alphas_cumprod[i + 1])
    c_skip, c_out = (float(v) for v in lcm_scalings(t, float(options.get("timestep_scaling", 10.0))))
    last = i + 1 == grid.num_steps
    lines = [f"x̂_0 = (x_t − √(1 − ᾱ_t)·ε̂) / √ᾱ_t = (x_t − {_num((1 - a_t) ** 0.5)}·ε̂) / {_num(a_t**0.5)}",
             f"f = c_skip·x_t + c_out·x̂_0 = {_num(c_skip)}·x_t + {_num(c_out)}·x̂_0  (Luo et al. 2023, Eq. 9)",
             "x_[prev] = f  (the last step)" if last else
             f"x_[prev] = √ᾱ_[prev]·f + √(1 − ᾱ_[prev])·z = {_num(a_prev**0.5)}·f + {_num((1 - a_prev) ** 0.5)}·z"]
    return "LCM, multistep consistency sampling (Song et al. 2023, Alg. 1)", lines, {
        "a_t": a_t, "a_prev": a_prev, "c_skip": c_skip, "c_out": c_out}


#: sampler name -> ``formula(grid, i, options) -> (name, lines, coefficients)``.
_FORMULAS: dict[str, Callable] = {
    "ddpm": _ddpm, "ddim": _ddim, "plms": _plms, "pndm": _pndm, "euler": _euler, "euler_a": _euler_a, "heun": _heun,
    "lms": _lms, "dpmpp_2m": _dpmpp_2m, "dpmpp_2m_sde": _dpmpp_2m_sde, "dpmpp_2s_a": _dpmpp_2s_a, "unipc": _unipc,
    "lcm": _lcm,
}


def step_records(settings: SamplerSettings, grid: SamplingGrid) -> list[StepRecord]:
    """One :class:`StepRecord` per step of ``grid`` as the sampler of ``settings`` walks it (options included)."""
    options = settings.sampler_options()
    formula = _FORMULAS.get(settings.sampler)
    records = []
    for i in range(grid.num_steps):
        if formula is None:  # a sampler registered later, with no formula here yet: the levels only
            name, lines, coefficients = settings.spec.label, [html.escape(settings.spec.description)], {}
        else:
            name, lines, coefficients = formula(grid, i, options)
            lines = [_html(line) for line in lines]
        records.append(StepRecord(i, float(grid.timesteps[i]), float(grid.timesteps[i + 1]), float(grid.alphas_cumprod[i]),
                                  float(grid.alphas_cumprod[i + 1]), float(grid.sigmas[i]), float(grid.sigmas[i + 1]),
                                  name, tuple(lines), dict(coefficients)))
    return records


# --------------------------------------------------------------------------------------------
# frames: tensors -> small PNG data URIs
# --------------------------------------------------------------------------------------------


def _png(array: np.ndarray, max_side: int) -> str:
    """uint8 (H, W) or (H, W, 3) -> a ``data:image/png;base64,...`` URI (downsampled, RGB to a 64-colour palette)."""
    from PIL import Image

    image = Image.fromarray(array)
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    if image.mode == "RGB":
        image = image.quantize(64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _tile(images: np.ndarray, gap: int = 1, rows: int = 1) -> np.ndarray:
    """(B, H, W[, 3]) uint8 -> ``rows`` rows of pictures, ``gap`` white pixels between."""
    cols = -(-len(images) // rows)
    blank = np.full_like(images[0], 255)
    images = list(images) + [blank] * (rows * cols - len(images))
    pad = [(0, gap), (0, gap)] + [(0, 0)] * (images[0].ndim - 2)
    padded = [np.pad(im, pad, constant_values=255) for im in images]
    grid = np.concatenate([np.concatenate(padded[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)
    return grid[:-gap, :-gap] if gap else grid


def _to_uint8(values: torch.Tensor, low: float, high: float) -> np.ndarray:
    v = ((values.detach().float().cpu() - low) / (high - low)).clamp(0, 1)
    return (torch.nan_to_num(v, nan=0.0) * 255).round().to(torch.uint8).numpy()


def _image_frame(batch: torch.Tensor, invert: bool = False) -> np.ndarray:
    """(B, 1 or 3, H, W) in [-1, 1] -> the pictures side by side (``invert``: 1 is black, as ``cmap="gray_r"``)."""
    pixels = _to_uint8(-batch if invert else batch, -1.0, 1.0)
    pixels = pixels[:, 0] if pixels.shape[1] == 1 else pixels.transpose(0, 2, 3, 1)
    return _tile(pixels, rows=max(1, round(math.sqrt(len(pixels) / 2))))


def _channels_frame(batch: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) latents -> a row per sample, its C channels side by side, in ±LATENT_RANGE."""
    pixels = _to_uint8(batch, -LATENT_RANGE, LATENT_RANGE)
    rows = [_tile(sample_channels) for sample_channels in pixels]
    gap = np.full((1, rows[0].shape[1]), 255, np.uint8)
    return np.concatenate([x for row in rows for x in (row, gap)][:-1], axis=0)


def _cloud_frame(points: torch.Tensor, limit: float, bins: int = 80) -> np.ndarray:
    """(N, 2) points -> a 2-D histogram over [-limit, limit]² (dark = dense), y upwards."""
    p = points.detach().double().cpu().numpy()
    counts, _, _ = np.histogram2d(p[:, 1], p[:, 0], bins=bins, range=[[-limit, limit], [-limit, limit]])
    density = np.sqrt(counts / max(counts.max(), 1))
    return (255 - density[::-1] * 255).round().astype(np.uint8)


def _frames(trajectory: Trajectory, decode: Callable | None, max_side: int, invert: bool) -> tuple[dict, dict]:
    """Panel title -> its N + 1 frames (PNG data URIs), and panel title -> the N + 1 captions."""
    xs, x0s = trajectory.x, trajectory.pred_x0
    n, shape = len(x0s), tuple(xs[0].shape)
    if len(shape) == 2 and shape[1] == 2:  # a point cloud, one fixed square for every frame
        limit = 1.05 * max(float(torch.quantile(x.detach().double().abs().cpu().flatten(), 0.995)) for x in (xs[0], xs[-1]))
        draw = lambda v: _cloud_frame(v, limit)  # noqa: E731
        note = f" ({shape[0]} points, 2-D histogram over ±{limit:.2f})"
        x_title, x0_title = "x_t" + note, "x̂₀, the step's prediction of x₀" + note
    elif len(shape) == 4 and decode is None and shape[1] in (1, 3):  # pictures
        draw = lambda v: _image_frame(v, invert)  # noqa: E731
        x_title, x0_title = "x_t", "x̂₀, the step's prediction of x₀"
    elif len(shape) == 4:  # latents
        draw = _channels_frame
        x_title = f"x_t: the {shape[1]} latent channels (±{LATENT_RANGE:g})"
        x0_title = "x̂₀: latent channels" if decode is None else "VAE(x̂₀), the step's prediction of the picture"
    else:
        raise SettingsError("trajectory", f"the step viewer shows images (B, C, H, W) or 2-D points (N, 2), got shape {shape}")
    state = [_png(draw(x), max_side) for x in xs]
    if decode is None:
        pred = [_png(draw(p), max_side) for p in x0s] + [state[-1]]
    else:
        with torch.no_grad():
            pred = [_png(_image_frame(decode(z), invert), max_side) for z in [*x0s, xs[-1]]]
    end = "the sample x₀ (no step left)" if decode is None else "the output: VAE(x₀)"
    return {x_title: state, x0_title: pred}, {x_title: [""] * (n + 1), x0_title: [""] * n + [end]}


def _display_height(uri: str, target: int = 160, max_width: int = 380) -> int:
    """The height in CSS pixels to show a frame at: an integer zoom to about ``target`` tall, at most ``max_width`` wide."""
    from PIL import Image

    width, height = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size
    return height * max(1, min(target // height, max_width // width))


# --------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------


def _frame_text(records: list[StepRecord], k: int) -> tuple[str, str, str]:
    """(the header line, the formula HTML, the numbers table HTML) of frame k."""
    n = len(records)
    if k == n:
        last = records[-1]
        end = "σ = 0, ᾱ = 1" if last.t_next < 0 else f"t = {_t(last.t_next)}, ᾱ = {_num(last.alpha_cumprod_next)}, σ = {_num(last.sigma_next)}"
        return (f"level {n} of {n}: the end point ({end})", "<div>The sample: no step left.</div>", "")
    r = records[k]
    header = (f"step {k + 1} of {n}: t = {_t(r.t)} → {_t(r.t_next)}, ᾱ = {_num(r.alpha_cumprod)} → {_num(r.alpha_cumprod_next)},"
              f" σ = {_num(r.sigma)} → {_num(r.sigma_next)}")
    formula = f"<div class='dnsv-rule'>{html.escape(r.name)}</div>" + "".join(f"<div>{line}</div>" for line in r.lines)
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{_num(value)}</td></tr>" for name, value in r.coefficients.items())
    return header, formula, f"<table class='dnsv-numbers'>{rows}</table>" if rows else ""


_STYLE = """
#{id} {{font-family: system-ui, sans-serif; font-size: 14px; border: 1px solid #ccc; padding: 8px; margin: 6px 0; max-width: 1100px;}}
#{id} .dnsv-title {{font-weight: bold; margin-bottom: 4px;}}
#{id} .dnsv-subtitle {{font-size: 12px; color: #444; margin-bottom: 4px;}}
#{id} .dnsv-panels {{display: flex; flex-wrap: wrap; gap: 16px;}}
#{id} figure {{margin: 0;}}
#{id} figure img {{max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; background: #fff;}}
#{id} figcaption {{font-size: 12px; color: #444;}}
#{id} .dnsv-controls {{display: flex; align-items: center; gap: 6px; margin: 6px 0;}}
#{id} .dnsv-controls input[type=range] {{flex: 1;}}
#{id} .dnsv-step {{font-weight: bold; margin: 4px 0;}}
#{id} .dnsv-formula div {{margin: 2px 0; font-family: 'DejaVu Serif', Georgia, serif;}}
#{id} .dnsv-rule {{font-style: italic; color: #333;}}
#{id} table.dnsv-numbers {{border-collapse: collapse; font-size: 12px; margin-top: 4px;}}
#{id} table.dnsv-numbers td {{border: 1px solid #ddd; padding: 1px 6px; font-family: monospace;}}
"""

_SCRIPT = """
(function () {
  var D = %(data)s;
  var roots = document.querySelectorAll("div[id='%(id)s']");  /* the same run shown twice: each copy plays */
  for (var r = 0; r < roots.length; r++) if (!roots[r].getAttribute("data-ready")) init(roots[r]);
  function init(root) {
  root.setAttribute("data-ready", "1");
  var slider = root.querySelector("input[type=range]");
  var images = root.querySelectorAll("img[data-panel]");
  var captions = root.querySelectorAll("figcaption[data-panel]");
  var step = root.querySelector(".dnsv-step"), formula = root.querySelector(".dnsv-formula");
  var numbers = root.querySelector(".dnsv-table"), play = root.querySelector(".dnsv-play"), timer = null;
  function show(k) {
    k = Math.max(0, Math.min(D.last, k));
    slider.value = k;
    for (var p = 0; p < images.length; p++) {
      var src = D.frames[p][k];
      images[p].style.visibility = src ? "visible" : "hidden";
      if (src) images[p].src = src;
      captions[p].textContent = D.titles[p] + (D.captions[p][k] ? ": " + D.captions[p][k] : "");
    }
    step.textContent = D.headers[k];
    formula.innerHTML = D.formulas[k];
    numbers.innerHTML = D.numbers[k];
    root.setAttribute("data-step", String(k));
  }
  function stop() { if (timer) { clearInterval(timer); timer = null; } play.textContent = "play"; }
  slider.addEventListener("input", function () { stop(); show(+slider.value); });
  root.querySelector(".dnsv-prev").addEventListener("click", function () { stop(); show(+slider.value - 1); });
  root.querySelector(".dnsv-next").addEventListener("click", function () { stop(); show(+slider.value + 1); });
  play.addEventListener("click", function () {
    if (timer) { stop(); return; }
    if (+slider.value >= D.last) show(0);
    play.textContent = "pause";
    timer = setInterval(function () { if (+slider.value >= D.last) { stop(); } else { show(+slider.value + 1); } }, %(interval)d);
  });
  show(+slider.value);
  }
})();
"""


class StepViewer:
    """The step-by-step page of one sampler run.

    ``trajectory``: from ``sample(..., return_trajectory=True)`` (N steps: N + 1 states, N predictions);
    ``grid`` and ``settings``: the grid the run walked and its sampler settings (:func:`watch` and
    :meth:`from_generation` pass them); ``decode``: latents -> images in [-1, 1] (the VAE), for latent runs;
    ``title`` and ``subtitle``: lines above the player; ``invert``: single-channel images drawn with 1 as black (the digits'
    ``cmap="gray_r"``); ``max_side``: frames are downsampled to at most this many pixels. :attr:`records` holds the numbers, :meth:`html` the HTML fragment
    (a notebook shows it as its output), :meth:`page` a whole document and :meth:`save` writes one.
    """

    def __init__(self, trajectory: Trajectory, grid: SamplingGrid, settings: SamplerSettings, *,
                 decode: Callable | None = None, title: str = "", subtitle: str = "", invert: bool = False,
                 max_side: int = 128,
                 interval_ms: int = 500):
        if not isinstance(trajectory, Trajectory) or not trajectory.pred_x0:
            raise SettingsError("trajectory", "the step viewer needs the trajectory of a run of at least one step: "
                                "sample(..., return_trajectory=True) or a pipeline call with return_trajectory=True")
        n = len(trajectory.pred_x0)
        if n != grid.num_steps or len(trajectory.x) != n + 1:
            raise SettingsError("trajectory", f"the trajectory has {n} steps and {len(trajectory.x)} states but the grid "
                                f"has {grid.num_steps} steps: pass the grid the run walked (grid.last(n) for img2img)")
        walked = torch.as_tensor([float(t) for t in trajectory.timesteps], dtype=torch.float64)
        if not torch.allclose(walked, grid.timesteps[:-1].double(), rtol=0, atol=1e-9):
            raise SettingsError("trajectory", "the trajectory's timesteps are not the grid's: pass the grid the run walked")
        self.settings, self.grid, self.title, self.subtitle = settings, grid, title, subtitle
        self.records = step_records(settings, grid)
        panels, captions = _frames(trajectory, decode, max_side, invert)
        self.frames = panels
        texts = [_frame_text(self.records, k) for k in range(n + 1)]
        data = {"last": n, "titles": list(panels), "frames": list(panels.values()), "captions": list(captions.values()),
                "headers": [t[0] for t in texts], "formulas": [t[1] for t in texts], "numbers": [t[2] for t in texts]}
        data_json = json.dumps(data, ensure_ascii=True, separators=(",", ":")).replace("</", "<\\/")
        self.id = "dn-step-viewer-" + hashlib.sha1((title + subtitle + data_json).encode()).hexdigest()[:12]
        self._html = self._fragment(data_json, panels, texts[0], interval_ms)

    def _fragment(self, data_json: str, panels: dict, first: tuple, interval_ms: int) -> str:
        n = len(self.records)
        title = html.escape(self.title or f"{self.settings.label}, {n} step{'s' * (n != 1)}")
        figures = "".join(
            f"<figure><img data-panel='{p}' alt='{html.escape(name)}' src='{frames[0] or ''}' "
            f"style='height: {_display_height(next(f for f in frames if f))}px'>"
            f"<figcaption data-panel='{p}'>{html.escape(name)}</figcaption></figure>"
            for p, (name, frames) in enumerate(panels.items()))
        style = _STYLE.format(id=self.id)
        script = _SCRIPT % {"id": self.id, "data": data_json, "interval": interval_ms}
        return (f"<div class='dn-step-viewer' id='{self.id}' data-step='0' data-steps='{n}'><style>{style}</style>"
                f"<div class='dnsv-title'>{title}</div>"
                + (f"<div class='dnsv-subtitle'>{html.escape(self.subtitle)}</div>" if self.subtitle else "")
                + f"<div class='dnsv-panels'>{figures}</div>"
                f"<div class='dnsv-controls'><button type='button' class='dnsv-prev'>prev</button>"
                f"<button type='button' class='dnsv-play'>play</button><button type='button' class='dnsv-next'>next</button>"
                f"<input type='range' min='0' max='{n}' step='1' value='0' aria-label='level'></div>"
                f"<div class='dnsv-step'>{html.escape(first[0])}</div><div class='dnsv-formula'>{first[1]}</div>"
                f"<div class='dnsv-table'>{first[2]}</div><script>{script}</script></div>")

    # ---- output

    def html(self) -> str:
        """The viewer as an HTML fragment (a ``<div>`` with its style and script), to embed in a page."""
        return self._html

    def _repr_html_(self) -> str:
        return self._html

    def __repr__(self) -> str:
        return f"StepViewer({self.settings.label}, {len(self.records)} steps, {len(self._html) / 1024:.0f} KiB)"

    def page(self) -> str:
        """A whole HTML document holding the viewer (what :meth:`save` writes)."""
        title = html.escape(self.title or f"{self.settings.label}: step by step")
        return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{title}</title></head>"
                f"<body>{self._html}</body></html>\n")

    def save(self, path) -> Path:
        """Write :meth:`page` to ``path``; never replaces an existing file (SettingsError naming it) and never
        leaves a partial one: the complete page is written under a hidden name, then hard-linked to ``path``
        (as :func:`~diffusion_notes.images.save_png` does)."""
        path = Path(path)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            with open(tmp, "x", encoding="utf-8") as f:
                f.write(self.page())
            os.link(tmp, path)
        except FileExistsError:
            raise SettingsError("path", f"{path} already exists; the step viewer never replaces a file, choose another name") from None
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def from_generation(cls, sd, generation, **options) -> "StepViewer":
        """The viewer of a pipeline run made with ``return_trajectory=True`` (latents; ``sd``'s VAE decodes x̂₀)."""
        from .decoding import decode

        if generation.trajectory is None or generation.request is None:
            raise SettingsError("return_trajectory", "the step viewer needs the run's trajectory: generate with "
                                "return_trajectory=True")
        request = generation.request
        grid = request.sampler.grid(sd.schedule).last(len(generation.trajectory.pred_x0))
        prompts = ", ".join(dict.fromkeys(request.conditioning.prompts))
        options.setdefault("title", f"{request.sampler.label}, {grid.num_steps} steps, guidance "
                           f"{request.conditioning.guidance_scale:g}: “{prompts}”")
        return cls(generation.trajectory, grid, request.sampler,
                   decode=lambda z: decode(sd, z.to(torch.float32), request.memory), **options)


def watch(eps_model, x_T: torch.Tensor, schedule, sampler: str = "plms", steps: int = 50, *,
          generator: torch.Generator | None = None, prediction_type: str = "eps", decode: Callable | None = None,
          title: str = "", invert: bool = False, **options) -> StepViewer:
    """Run :func:`~diffusion_notes.sampling.sample` with ``return_trajectory=True`` and return its :class:`StepViewer`.

    The arguments are :func:`~diffusion_notes.sampling.sample`'s (``options``: ``sigma_schedule``, ``eta``, ...);
    ``decode``, ``title`` and ``invert`` are the viewer's. The sample itself is ``viewer.sample``."""
    settings = SamplerSettings(sampler, steps, **{k: options.pop(k) for k in ("sigma_schedule", "spacing", "steps_offset",
                                                                              "quantize") if k in options},
                               options=options)
    grid = schedule if isinstance(schedule, SamplingGrid) else settings.grid(schedule)
    with torch.no_grad():
        x0, trajectory = sample(eps_model, x_T, grid, settings=settings, generator=generator,
                                prediction_type=prediction_type, return_trajectory=True)
    viewer = StepViewer(trajectory, grid, settings, decode=decode, title=title, invert=invert)
    viewer.sample = x0
    return viewer

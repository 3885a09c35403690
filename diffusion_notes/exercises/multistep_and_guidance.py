"""Exercises of ``notebooks/exercises/03_multistep_and_guidance.ipynb``: the Adams-Bashforth
coefficients behind PLMS, the pseudo improved Euler (Heun) step, and classifier-free guidance."""

from __future__ import annotations

from fractions import Fraction

import torch

from ..guidance import classifier_free_guidance
from ..mixture import GaussianMixture
from ..samplers import ADAMS_BASHFORTH, ddim_step, plms_step
from ..schedules import NoiseSchedule
from .cases import gen
from .harness import F64, Exercise, register


# Adams-Bashforth coefficients


def _ab_reference(order):
    if order == 1:
        return [Fraction(1)]
    coefficients, denominator = ADAMS_BASHFORTH[order]
    return [Fraction(c, denominator) for c in coefficients]


register(
    Exercise(
        name="adams_bashforth_coefficients",
        signature="(order) -> coefficients b_0..b_{order-1}, newest first",
        reference=_ab_reference,
        cases=lambda: [(f"order {k}", dict(order=k)) for k in (1, 2, 3, 4)],
        atol=1e-12,
        rtol=1e-12,
        mistakes=[
            (lambda order: list(reversed(_ab_reference(order))), "the order is reversed: list the coefficient of the NEWEST value (f_n) first."),
            (lambda order: [c * (ADAMS_BASHFORTH.get(order, ((1,), 1))[1]) for c in _ab_reference(order)], "divide by the common denominator: the coefficients sum to 1 (a constant f must be integrated exactly)."),
            (lambda order: [-c for c in _ab_reference(order)], "sign: integrate the interpolating polynomial FORWARD over [0, 1] (s = 0 is the newest node, past nodes at s = -1, -2, ...)."),
        ],
        hint="b_j = integral over s in [0, 1] of the Lagrange basis polynomial l_j(s) through the nodes s = 0, -1, ..., -(order-1). They sum to 1.",
    )
)

# pseudo improved Euler


def _pie_cases():
    schedule = NoiseSchedule.stable_diffusion()
    mixture = GaussianMixture.example()
    model = mixture.eps_model(schedule)

    def eps_fn(x, t):
        return model(x, torch.full((x.shape[0],), int(t)))

    eps_fn.__name__ = "eps_fn (the exact Gaussian-mixture denoiser)"
    a = schedule.alphas_cumprod
    cases = []
    for k, (t, t_next) in enumerate([(981, 961), (501, 401), (101, 1)]):
        x = torch.randn(5, 2, generator=gen(200 + k), dtype=F64) * float((1 - a[t]).sqrt())
        cases.append((f"t={t} -> {t_next}", dict(eps_fn=eps_fn, x=x, t=t, t_next=t_next, a_t=float(a[t]), a_prev=float(a[t_next]))))
    return cases


def _pie_variant(eps_fn, x, t, t_next, a_t, a_prev, kind):
    e_t = eps_fn(x, t)
    if kind == "euler":
        return ddim_step(x, e_t, a_t, a_prev)[0]
    x_mid, _ = ddim_step(x, e_t, a_t, a_prev)
    if kind == "same_t":
        e_next = eps_fn(x_mid, t)
    else:
        e_next = eps_fn(x_mid, t_next)
    if kind == "only_next":
        return ddim_step(x, e_next, a_t, a_prev)[0]
    if kind == "from_mid":
        return ddim_step(x_mid, (e_t + e_next) / 2, a_t, a_prev)[0]
    return ddim_step(x, (e_t + e_next) / 2, a_t, a_prev)[0]


register(
    Exercise(
        name="pseudo_improved_euler",
        signature="(eps_fn, x, t, t_next, a_t, a_prev) -> x_prev",
        reference=lambda eps_fn, x, t, t_next, a_t, a_prev: plms_step(eps_fn, x, t, t_next, a_t, a_prev, old_eps=[])[0],
        cases=_pie_cases,
        mistakes=[
            (lambda **kw: _pie_variant(**kw, kind="euler"), "that is a plain DDIM (Euler) step; improved Euler evaluates the model again at the predicted x_prev and averages the two estimates."),
            (lambda **kw: _pie_variant(**kw, kind="only_next"), "use the AVERAGE (e_t + e_t_next) / 2, not e_t_next alone."),
            (lambda **kw: _pie_variant(**kw, kind="same_t"), "evaluate the second estimate at the NEXT timestep t_next (the noise level of the predicted x_prev), not at t."),
            (lambda **kw: _pie_variant(**kw, kind="from_mid"), "the corrector step starts again from x (x_t), not from the predicted x_prev."),
        ],
        hint="Heun: x_pred = ddim(x, e_t); e_next = eps_fn(x_pred, t_next); x_prev = ddim(x, (e_t + e_next) / 2). ddim(x, e) = sqrt(a_prev) (x - sqrt(1-a_t) e)/sqrt(a_t) + sqrt(1-a_prev) e.",
    )
)

# classifier-free guidance


def _cfg_cases():
    g = gen(300)
    e_u, e_c = torch.randn(2, 4, 3, 3, generator=g, dtype=F64), torch.randn(2, 4, 3, 3, generator=g, dtype=F64)
    return [(f"scale {s}", dict(e_uncond=e_u, e_cond=e_c, scale=s)) for s in (7.5, 1.0, 0.0, 3.0)]


register(
    Exercise(
        name="classifier_free_guidance",
        signature="(e_uncond, e_cond, scale) -> e_guided",
        reference=lambda e_uncond, e_cond, scale: classifier_free_guidance(e_uncond, e_cond, scale),
        cases=_cfg_cases,
        mistakes=[
            (lambda e_uncond, e_cond, scale: e_cond + scale * (e_uncond - e_cond), "swapped: start from the UNconditional prediction and move towards the conditional one: e_u + s (e_c - e_u)."),
            (lambda e_uncond, e_cond, scale: e_cond + scale * (e_cond - e_uncond), "that is Ho & Salimans' w form, (1 + w) e_c - w e_u, with w = scale; CompVis/diffusers' scale s equals w + 1: e_u + s (e_c - e_u). Check: scale 1 must give e_cond exactly."),
            (lambda e_uncond, e_cond, scale: scale * e_cond, "scaling e_cond alone is not guidance: the unconditional prediction must enter: e_u + s (e_c - e_u)."),
        ],
        hint="Ho & Salimans 2022 Eq. 6 in CompVis's form: e = e_uncond + scale * (e_cond - e_uncond); scale 0 = unconditional, 1 = conditional.",
    )
)


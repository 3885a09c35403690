r"""Exercises of ``notebooks/exercises/10_inversion_and_guidance.ipynb``: one DDIM inversion step
(DDIM Eq. 12 run towards more noise), spherical interpolation (Shoemake 1985), the classifier-guidance
adjustment of :math:`\epsilon` (Dhariwal & Nichol 2021, Algorithm 2), LCM's consistency function
(Luo et al. 2023, Eq. 9), one step of multistep consistency sampling (Song et al. 2023, Algorithm 1) and the
teacher's guided DDIM step of latent consistency distillation (Luo et al. 2023, Algorithm 1, with LCM's
:math:`\omega`).

Kept out of the shared registry :data:`~diffusion_notes.exercises.EXERCISES` (the lesson's own, as the
other chapters' exercises are): import the checkers from here,
``from diffusion_notes.exercises.inversion_guidance import check_ddim_inversion_step``. The references are
the library functions (:func:`~diffusion_notes.samplers.ddim.ddim_step`, :func:`~diffusion_notes.inversion.slerp`,
:func:`~diffusion_notes.gradient_guidance.classifier_guidance`, :func:`~diffusion_notes.samplers.lcm.consistency_function`,
:func:`~diffusion_notes.samplers.lcm.lcm_step`, :func:`~diffusion_notes.consistency_distillation.guided_teacher_step`),
which ``tests/test_inversion.py``, ``test_gradient_guidance.py``, ``test_lcm_sampler.py`` and
``test_consistency_distillation.py`` check against diffusers, scipy, closed forms and brute-force transcriptions.
"""

from __future__ import annotations

import math

import torch

from ..consistency_distillation import guided_teacher_step
from ..gradient_guidance import classifier_guidance
from ..inversion import lerp, slerp
from ..samplers.ddim import ddim_step
from ..samplers.lcm import consistency_function, lcm_step
from ..schedules import NoiseSchedule
from .cases import gen
from .harness import F64, Exercise, checker

__all__ = ["INVERSION_STEP", "SLERP", "CLASSIFIER_GUIDANCE", "CONSISTENCY", "LCM_STEP", "TEACHER_STEP",
           "check_ddim_inversion_step", "check_slerp", "check_classifier_guided_eps", "check_consistency_function",
           "check_lcm_step", "check_lcm_teacher_step"]

_SD = NoiseSchedule.stable_diffusion()


def _acp(t: int) -> float:
    return float(_SD.alphas_cumprod[t])


# --- one DDIM inversion step -------------------------------------------------------------------


def _inversion_cases():
    cases = []
    for k, (t, t_next) in enumerate([(0, 20), (481, 501), (899, 999)]):
        g = gen(1000 + k)
        x_t = torch.randn(2, 1, 3, 3, generator=g, dtype=F64)
        e_t = torch.randn(2, 1, 3, 3, generator=g, dtype=F64)
        cases.append((f"SD's t = {t} -> {t_next}", dict(x_t=x_t, e_t=e_t, a_t=_acp(t), a_next=_acp(t_next))))
    return cases


INVERSION_STEP = Exercise(
    name="ddim_inversion_step",
    signature="(x_t, e_t, a_t, a_next) -> x_next",
    reference=lambda x_t, e_t, a_t, a_next: ddim_step(x_t, e_t, a_t, a_next)[0],
    cases=_inversion_cases,
    mistakes=[
        (lambda x_t, e_t, a_t, a_next: a_next**0.5 * (x_t - (1 - a_t) ** 0.5 * e_t) / a_t**0.5 + (1 - a_t) ** 0.5 * e_t,
         "the direction term belongs to the level you go TO: sqrt(1 - a_next) e_t, not sqrt(1 - a_t) e_t."),
        (lambda x_t, e_t, a_t, a_next: a_next**0.5 * (x_t - (1 - a_t) ** 0.5 * e_t) + (1 - a_next) ** 0.5 * e_t,
         "pred_x0 = (x_t - sqrt(1 - a_t) e_t) / sqrt(a_t): divide by sqrt(a_t) before scaling by sqrt(a_next)."),
        (lambda x_t, e_t, a_t, a_next: a_t**0.5 * (x_t - (1 - a_next) ** 0.5 * e_t) / a_next**0.5 + (1 - a_t) ** 0.5 * e_t,
         "a_t and a_next are swapped: that is a sampling step from a_next down to a_t. x_t sits at a_t; you go to a_next."),
    ],
    hint="DDIM Eq. 12 with eta = 0 is the same formula in both directions: pred_x0 = (x_t - sqrt(1 - a_t) e_t) / sqrt(a_t), "
         "then x_next = sqrt(a_next) pred_x0 + sqrt(1 - a_next) e_t, where a_next < a_t (more noise).",
)

# --- slerp -------------------------------------------------------------------------------------


def _slerp_cases():
    g = gen(1100)
    v0, v1 = torch.randn(3, 1, 4, 4, generator=g, dtype=F64), torch.randn(3, 1, 4, 4, generator=g, dtype=F64)
    close = v0 + 0.3 * torch.randn(3, 1, 4, 4, generator=g, dtype=F64)
    return [("two independent noises, alpha = 0.5", dict(v0=v0, v1=v1, alpha=0.5)),
            ("two independent noises, alpha = 0.2", dict(v0=v0, v1=2 * v1, alpha=0.2)),
            ("nearby vectors of different norms, alpha = 0.7", dict(v0=v0, v1=close, alpha=0.7))]


def _slerp_normalising_by_v0_only(v0, v1, alpha):
    cos = (v0 * v1).flatten(1).sum(1) / (v0 * v0).flatten(1).sum(1)  # right only when |v0| = |v1|
    theta = torch.arccos(cos.clamp(-1, 1)).reshape(-1, 1, 1, 1)
    return (torch.sin((1 - alpha) * theta) * v0 + torch.sin(alpha * theta) * v1) / torch.sin(theta)


def _slerp_one_angle_for_the_batch(v0, v1, alpha):
    cos = (v0 * v1).sum() / (v0.norm() * v1.norm())
    theta = torch.arccos(cos)
    return (torch.sin((1 - alpha) * theta) * v0 + torch.sin(alpha * theta) * v1) / torch.sin(theta)


SLERP = Exercise(
    name="slerp",
    signature="(v0, v1, alpha) -> v",
    reference=slerp,
    cases=_slerp_cases,
    mistakes=[
        (lerp, "that is linear interpolation (1 - alpha) v0 + alpha v1, which shrinks the norm; weight by sin((1 - alpha) theta) / sin(theta) and sin(alpha theta) / sin(theta)."),
        (lambda v0, v1, alpha: slerp(v0, v1, 1 - alpha), "the weights are swapped: at alpha = 0 the result must be v0, so v0's weight is sin((1 - alpha) theta) / sin(theta)."),
        (_slerp_normalising_by_v0_only, "cos(theta) is the inner product divided by BOTH norms: <v0, v1> / (|v0| |v1|)."),
        (_slerp_one_angle_for_the_batch, "one angle per batch element: take the inner product and the norms over all but the first dimension."),
    ],
    hint="cos(theta) = <v0, v1> / (|v0| |v1|) per batch element (sum over all dimensions but the first); "
         "slerp = sin((1 - alpha) theta) / sin(theta) v0 + sin(alpha theta) / sin(theta) v1 (Shoemake 1985).",
)

# --- classifier guidance -----------------------------------------------------------------------


def _guidance_cases():
    cases = []
    for k, (t, scale) in enumerate([(999, 1.0), (500, 3.0), (20, 10.0)]):
        g = gen(1200 + k)
        e_t = torch.randn(2, 1, 3, 3, generator=g, dtype=F64)
        grad = torch.randn(2, 1, 3, 3, generator=g, dtype=F64)
        cases.append((f"SD's t = {t}, scale {scale:g}", dict(e_t=e_t, grad_log_p=grad, a_t=_acp(t), scale=scale)))
    return cases


CLASSIFIER_GUIDANCE = Exercise(
    name="classifier_guided_eps",
    signature="(e_t, grad_log_p, a_t, scale) -> e_hat",
    reference=lambda e_t, grad_log_p, a_t, scale: classifier_guidance(e_t, grad_log_p, a_t, scale),
    cases=_guidance_cases,
    mistakes=[
        (lambda e_t, grad_log_p, a_t, scale: e_t + scale * (1 - a_t) ** 0.5 * grad_log_p,
         "sign: eps points AWAY from the data (eps = -sqrt(1 - abar) * score), so adding log-probability means SUBTRACTING its gradient."),
        (lambda e_t, grad_log_p, a_t, scale: e_t - scale * grad_log_p,
         "the gradient is a score; in eps units it is scaled by sqrt(1 - abar_t) (eps = -sqrt(1 - abar_t) * score)."),
        (lambda e_t, grad_log_p, a_t, scale: e_t - scale * (1 - a_t) * grad_log_p,
         "use the standard deviation sqrt(1 - abar_t), not the variance 1 - abar_t."),
    ],
    hint="Dhariwal & Nichol 2021, Algorithm 2: e_hat = e_t - scale * sqrt(1 - abar_t) * grad_x log p(y | x_t).",
)

# --- LCM's consistency function ----------------------------------------------------------------


def _consistency_cases():
    cases = []
    for k, t in enumerate([3, 259, 999, 0]):
        g = gen(1300 + k)
        x = torch.randn(2, 1, 3, 3, generator=g, dtype=F64)
        e_t = torch.randn(2, 1, 3, 3, generator=g, dtype=F64)
        cases.append((f"t = {t}", dict(x=x, e_t=e_t, a_t=_acp(t), t=t)))
    return cases


CONSISTENCY = Exercise(
    name="consistency_function",
    signature="(x, e_t, a_t, t) -> f",
    reference=lambda x, e_t, a_t, t: consistency_function(x, e_t, a_t, t)[0],
    cases=_consistency_cases,
    mistakes=[
        (lambda x, e_t, a_t, t: consistency_function(x, e_t, a_t, t, timestep_scaling=1.0)[0],
         "LCM scales the timestep by 10 before the boundary-condition scalings: c_skip and c_out take 10 t, not t."),
        (lambda x, e_t, a_t, t: ((10 * t) / math.sqrt((10 * t) ** 2 + 0.25)) * x + (0.25 / ((10 * t) ** 2 + 0.25)) * (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5,
         "c_skip multiplies x_t and c_out multiplies x0_hat: at t = 0 the function must return x itself (the boundary condition)."),
        (lambda x, e_t, a_t, t: (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5,
         "that is x0_hat alone; f = c_skip(t) x + c_out(t) x0_hat, which equals x at t = 0 (the boundary condition)."),
    ],
    hint="c_skip = 0.25 / ((10 t)^2 + 0.25), c_out = 10 t / sqrt((10 t)^2 + 0.25) (sigma_data = 0.5), "
         "x0_hat = (x - sqrt(1 - a_t) e_t) / sqrt(a_t), f = c_skip x + c_out x0_hat (Luo et al. 2023, Eq. 9).",
)

# --- one step of multistep consistency sampling -------------------------------------------------


def _lcm_step_cases():
    cases = []  # LCM's 4-step grid 999 -> 759 -> 499 -> 259, and the last levels of a long grid (t = 1: c_skip ~ 0.0025)
    for k, (t, t_prev) in enumerate([(999, 759), (499, 259), (19, 1), (1, 0)]):
        g = gen(1400 + k)
        x = torch.randn(2, 1, 3, 3, generator=g, dtype=F64)
        e_t = torch.randn(2, 1, 3, 3, generator=g, dtype=F64)
        noise = torch.randn(2, 1, 3, 3, generator=g, dtype=F64)
        cases.append((f"t = {t} -> {t_prev}", dict(x=x, e_t=e_t, a_t=_acp(t), t=t, a_prev=_acp(t_prev), noise=noise)))
    return cases


def _renoised_x0_hat(x, e_t, a_t, t, a_prev, noise):
    x0_hat = (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
    return a_prev**0.5 * x0_hat + (1 - a_prev) ** 0.5 * noise


LCM_STEP = Exercise(
    name="lcm_step",
    signature="(x, e_t, a_t, t, a_prev, noise) -> x_prev",
    reference=lambda x, e_t, a_t, t, a_prev, noise: lcm_step(x, e_t, a_t, t, a_prev, noise)[0],
    cases=_lcm_step_cases,
    mistakes=[
        (lambda x, e_t, a_t, t, a_prev, noise: lcm_step(x, e_t, a_t, t, a_prev, e_t)[0],
         "that re-noises with the model's own e_t, a deterministic DDIM step; consistency sampling forgets the path and adds FRESH noise z."),
        (lambda x, e_t, a_t, t, a_prev, noise: a_prev**0.5 * consistency_function(x, e_t, a_t, t)[0] + (1 - a_prev) * noise,
         "the noise is scaled by the standard deviation sqrt(1 - a_prev), not the variance 1 - a_prev."),
        (lambda x, e_t, a_t, t, a_prev, noise: lcm_step(x, e_t, a_t, t, a_t, noise)[0],
         "re-noise to the NEXT level: sqrt(a_prev) f + sqrt(1 - a_prev) z; a_t is the level you came from."),
        (_renoised_x0_hat,
         "re-noise f(x, t) = c_skip x + c_out x0_hat, not x0_hat alone (they differ where c_skip is not negligible, e.g. t = 1)."),
    ],
    hint="f = c_skip(t) x + c_out(t) x0_hat (your consistency_function), then x_prev = sqrt(a_prev) f + sqrt(1 - a_prev) noise "
         "(Song et al. 2023, Algorithm 1).",
)

# --- the teacher's guided step of latent consistency distillation -------------------------------


def _teacher_cases():
    cases = []  # LCM's skipping step k = 20 on its 50-level grid, at several guidance strengths omega
    for k, (t, omega) in enumerate([(999, 6.5), (499, 2.0), (39, 0.0)]):
        g = gen(1500 + k)
        x_t = torch.randn(2, 4, 2, 2, generator=g, dtype=F64)
        e_u, e_c = torch.randn(2, 4, 2, 2, generator=g, dtype=F64), torch.randn(2, 4, 2, 2, generator=g, dtype=F64)
        cases.append((f"t = {t} -> {t - 20}, omega = {omega:g}",
                      dict(x_t=x_t, eps_uncond=e_u, eps_cond=e_c, omega=omega, a_t=_acp(t), a_prev=_acp(t - 20))))
    return cases


TEACHER_STEP = Exercise(
    name="lcm_teacher_step",
    signature="(x_t, eps_uncond, eps_cond, omega, a_t, a_prev) -> x_prev",
    reference=lambda x_t, eps_uncond, eps_cond, omega, a_t, a_prev:
        guided_teacher_step(x_t, eps_uncond, eps_cond, a_t, a_prev, guidance_scale=1 + omega),
    cases=_teacher_cases,
    mistakes=[
        (lambda x_t, eps_uncond, eps_cond, omega, a_t, a_prev: guided_teacher_step(x_t, eps_uncond, eps_cond, a_t, a_prev, omega),
         "LCM's omega is not the CFG scale s: eps = (1 + omega) eps_cond - omega eps_uncond, i.e. s = 1 + omega (omega = 0 is the conditional model)."),
        (lambda x_t, eps_uncond, eps_cond, omega, a_t, a_prev: guided_teacher_step(x_t, eps_cond, eps_uncond, a_t, a_prev, 1 + omega),
         "the branches are swapped: guidance pushes AWAY from the unconditional prediction, (1 + omega) eps_cond - omega eps_uncond."),
        (lambda x_t, eps_uncond, eps_cond, omega, a_t, a_prev:
            guided_teacher_step(x_t, eps_cond, eps_cond, a_t, a_prev, 1.0) + omega * (eps_cond - eps_uncond),
         "guidance acts on eps before the DDIM step, not on the result: compute the guided eps first, then one DDIM step with it."),
        (lambda x_t, eps_uncond, eps_cond, omega, a_t, a_prev: guided_teacher_step(x_t, eps_uncond, eps_cond, a_prev, a_t, 1 + omega),
         "a_t and a_prev are swapped: the teacher steps from x_t at a_t DOWN to the less noisy a_prev."),
    ],
    hint="eps = (1 + omega) eps_cond - omega eps_uncond (LCM Sec. 4.2), x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), "
         "x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev) eps (one DDIM step, Eq. 12 with eta = 0).",
)

check_ddim_inversion_step = checker(INVERSION_STEP)
check_slerp = checker(SLERP)
check_classifier_guided_eps = checker(CLASSIFIER_GUIDANCE)
check_consistency_function = checker(CONSISTENCY)
check_lcm_step = checker(LCM_STEP)
check_lcm_teacher_step = checker(TEACHER_STEP)

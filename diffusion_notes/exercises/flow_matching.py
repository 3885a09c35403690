"""Exercises of ``notebooks/exercises/11_flow_matching.ipynb``: the straight path and its velocity target (rectified
flow, Liu et al. 2023 Eq. 1; Lipman et al. 2023 Eq. 9), the noise recovered from a velocity, one Euler step of the flow
ODE (diffusers ``FlowMatchEulerDiscreteScheduler.step``) and SD3's timestep shift (Esser et al. 2024, Eq. 23)."""

from __future__ import annotations

import torch

from .cases import gen
from .harness import F64, Exercise, register


def _images(seed: int, batch: int = 4):
    g = gen(seed)
    return torch.rand(batch, 1, 3, 3, generator=g, dtype=F64) * 2 - 1, torch.randn(batch, 1, 3, 3, generator=g, dtype=F64)


def _column(t, like):
    return t.reshape(-1, *([1] * (like.dim() - 1)))


# the straight path and its velocity


def _path_cases():
    cases = []
    for k, ts in enumerate([[0.0, 0.25, 0.5, 1.0], [0.03, 0.4, 0.77, 0.999]]):
        x0, eps = _images(900 + k)
        cases.append((f"t = {ts}", dict(x0=x0, eps=eps, t=torch.tensor(ts, dtype=F64))))
    return cases


register(
    Exercise(
        name="flow_path_and_target",
        signature="(x0, eps, t) -> (x_t, u)",
        reference=lambda x0, eps, t: ((1 - _column(t, x0)) * x0 + _column(t, x0) * eps, eps - x0),
        cases=_path_cases,
        mistakes=[
            (lambda x0, eps, t: ((1 - _column(t, x0)) * x0 + _column(t, x0) * eps, x0 - eps),
             "x_t is right; the velocity points from the data to the noise, u = d x_t / dt = eps - x0 (t grows towards noise)."),
            (lambda x0, eps, t: (_column(t, x0) * x0 + (1 - _column(t, x0)) * eps, eps - x0),
             "t = 0 is the data and t = 1 the noise (SD3's direction): x_t = (1 - t) x0 + t eps."),
            (lambda x0, eps, t: ((1 - _column(t, x0)) * x0 + _column(t, x0) * eps, eps),
             "the target is the velocity of the whole path, eps - x0, not the noise alone (that is DDPM's target)."),
        ],
        hint="x_t = (1 - t) x0 + t eps, one t per batch element (reshape t to (B, 1, 1, 1)); differentiate in t: u = eps - x0.",
    )
)


# the noise from a velocity


def _eps_cases():
    cases = []
    for k, ts in enumerate([[0.1, 0.5, 0.9, 0.99], [0.001, 0.2, 0.6, 0.8]]):
        x0, eps = _images(910 + k)
        t = torch.tensor(ts, dtype=F64)
        x_t = (1 - _column(t, x0)) * x0 + _column(t, x0) * eps
        v = eps - x0 + 0.01 * torch.randn(x0.shape, generator=gen(920 + k), dtype=F64)  # an imperfect prediction
        cases.append((f"t = {ts}, an imperfect velocity", dict(x_t=x_t, v=v, t=t)))
    return cases


register(
    Exercise(
        name="eps_from_velocity",
        signature="(x_t, v, t) -> eps_hat",
        reference=lambda x_t, v, t: x_t + (1 - _column(t, x_t)) * v,
        cases=_eps_cases,
        mistakes=[
            (lambda x_t, v, t: x_t - _column(t, x_t) * v, "that is the x0 estimate, x_t - t v; the noise is at the other end: x_t + (1 - t) v."),
            (lambda x_t, v, t: x_t + _column(t, x_t) * v, "from x_t to the noise end (t = 1) is a step of length 1 - t along v: x_t + (1 - t) v."),
            (lambda x_t, v, t: v, "v = eps - x0 is not eps: walk from x_t along v to t = 1, eps = x_t + (1 - t) v."),
        ],
        hint="x_t = (1 - t) x0 + t eps and v = eps - x0 give x_t + (1 - t) v = (1 - t) x0 + t eps + (1 - t) eps - (1 - t) x0 = eps.",
    )
)


# one Euler step of the flow ODE


def _euler_cases():
    cases = []
    for k, (sigma, sigma_next) in enumerate([(1.0, 0.9), (0.5, 0.45), (0.05, 0.0)]):
        x, v = _images(930 + k)
        cases.append((f"sigma {sigma} -> {sigma_next}", dict(x=x, v=v, sigma=sigma, sigma_next=sigma_next)))
    return cases


register(
    Exercise(
        name="flow_euler_step",
        signature="(x, v, sigma, sigma_next) -> x_next",
        reference=lambda x, v, sigma, sigma_next: x + (sigma_next - sigma) * v,
        cases=_euler_cases,
        mistakes=[
            (lambda x, v, sigma, sigma_next: x + (sigma - sigma_next) * v, "sign: sigma DEcreases, and dx/dsigma = v, so x_next = x + (sigma_next - sigma) v."),
            (lambda x, v, sigma, sigma_next: x - sigma * v, "x - sigma v is the x0 estimate (a jump to sigma = 0); one step only goes to sigma_next."),
            (lambda x, v, sigma, sigma_next: x - sigma_next * v, "the step length is sigma - sigma_next: x_next = x + (sigma_next - sigma) v."),
        ],
        hint="the flow ODE is dx/dsigma = v(x, sigma); Euler: x_next = x + (sigma_next - sigma) v (diffusers FlowMatchEulerDiscreteScheduler.step: sample + dt * model_output).",
    )
)


# SD3's shift


def _shift_cases():
    levels = torch.linspace(1.0, 0.0, 11, dtype=F64)
    return [(f"shift {s}, sigma from 1 to 0", dict(sigmas=levels, shift=s)) for s in (3.0, 0.5, 1.0)]


register(
    Exercise(
        name="sd3_shift",
        signature="(sigmas, shift) -> shifted_sigmas",
        reference=lambda sigmas, shift: shift * sigmas / (1 + (shift - 1) * sigmas),
        cases=_shift_cases,
        mistakes=[
            (lambda sigmas, shift: (shift * sigmas).clamp(max=1), "multiplying alone does not keep sigma in [0, 1]: divide by 1 + (s - 1) sigma, which maps 1 to 1."),
            (lambda sigmas, shift: sigmas / (shift + (1 - shift) * sigmas), "that is the inverse shift (s -> 1/s): the shift moves levels TOWARDS the noise for s > 1."),
            (lambda sigmas, shift: shift * sigmas / (1 + shift * sigmas), "the denominator is 1 + (s - 1) sigma, so that sigma = 1 stays 1."),
        ],
        hint="Esser et al. 2024, Eq. 23: sigma' = s sigma / (1 + (s - 1) sigma); it fixes 0 and 1 and, for s > 1, puts more of the grid at high noise.",
    )
)

"""Reference solutions to notebooks/exercises/10_inversion_and_guidance.ipynb, written from the formulas
(without calling the library functions they are checked against). tests/test_exercises_inversion.py runs
every checker on these."""

import math

import torch


def ddim_inversion_step(x_t, e_t, a_t, a_next):
    pred_x0 = (x_t - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
    return a_next**0.5 * pred_x0 + (1 - a_next) ** 0.5 * e_t


def slerp(v0, v1, alpha):
    dims = list(range(1, v0.dim()))
    norm0, norm1 = (v0 * v0).sum(dims, keepdim=True).sqrt(), (v1 * v1).sum(dims, keepdim=True).sqrt()
    cos_theta = (v0 * v1).sum(dims, keepdim=True) / (norm0 * norm1)
    theta = torch.arccos(cos_theta.clamp(-1, 1))
    return (torch.sin((1 - alpha) * theta) * v0 + torch.sin(alpha * theta) * v1) / torch.sin(theta)


def classifier_guided_eps(e_t, grad_log_p, a_t, scale):
    return e_t - scale * math.sqrt(1 - a_t) * grad_log_p


def consistency_function(x, e_t, a_t, t):
    c = 10 * t  # LCM's timestep_scaling
    c_skip = 0.25 / (c**2 + 0.25)
    c_out = c / math.sqrt(c**2 + 0.25)
    x0_hat = (x - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
    return c_skip * x + c_out * x0_hat


def lcm_step(x, e_t, a_t, t, a_prev, noise):
    f = consistency_function(x, e_t, a_t, t)
    return math.sqrt(a_prev) * f + math.sqrt(1 - a_prev) * noise


def lcm_teacher_step(x_t, eps_uncond, eps_cond, omega, a_t, a_prev):
    eps = (1 + omega) * eps_cond - omega * eps_uncond
    x0_hat = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    return math.sqrt(a_prev) * x0_hat + math.sqrt(1 - a_prev) * eps

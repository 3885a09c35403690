"""Solutions of notebooks/exercises/11_flow_matching.ipynb (flow matching)."""

import torch


def _column(t, like):
    return torch.as_tensor(t, dtype=like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def flow_path_and_target(x0, eps, t):
    t = _column(t, x0)
    return (1 - t) * x0 + t * eps, eps - x0


def eps_from_velocity(x_t, v, t):
    return x_t + (1 - _column(t, x_t)) * v


def flow_euler_step(x, v, sigma, sigma_next):
    return x + (sigma_next - sigma) * v


def sd3_shift(sigmas, shift):
    return shift * sigmas / (1 + (shift - 1) * sigmas)

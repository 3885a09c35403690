"""Deterministic stand-ins for a trained network, shared by the sampler tests."""

import torch


def dummy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth nonlinear function of (x, t): every sampler's arithmetic is exercised, nothing is linear."""
    tt = t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) / 1000
    return torch.tanh(1.5 * x + tt) * (1 + 0.3 * torch.cos(3 * tt)) + 0.1 * torch.sin(2 * x)

"""Fixed inputs that exercises of several notebooks share: the three beta schedules, a batch of small
images with one timestep each (including t = 0 and t = T-1), seeded generators, and the library's
:class:`NoiseSchedule` for a student's ``betas`` or ``alphas_cumprod``."""

from __future__ import annotations

import torch

from ..forward import get_v, q_sample
from ..schedules import NoiseSchedule, make_beta_schedule
from .harness import F64


def schedules() -> list[tuple[str, torch.Tensor]]:
    return [
        ("DDPM linear, T=1000", make_beta_schedule("linear", 1000)),
        ("Stable Diffusion scaled_linear, T=1000", make_beta_schedule("scaled_linear", 1000, linear_start=0.00085, linear_end=0.012)),
        ("cosine, T=50", make_beta_schedule("cosine", 50)),
    ]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch_cases() -> list[tuple[str, dict]]:
    """Images (B, C, H, W) with one timestep per batch element, including t = 0 and t = T-1."""
    cases = []
    for k, (label, betas) in enumerate(schedules()):
        T = betas.shape[0]
        g = gen(k)
        x0 = torch.rand(4, 1, 3, 3, generator=g, dtype=F64) * 2 - 1
        noise = torch.randn(4, 1, 3, 3, generator=g, dtype=F64)
        t = torch.tensor([0, 1, T // 2, T - 1])
        cases.append((label + ", t = " + str(t.tolist()), dict(x0=x0, noise=noise, t=t, betas=betas)))
    return cases


def from_betas(betas) -> NoiseSchedule:
    return NoiseSchedule.from_betas(betas)


def from_alphas_cumprod(alphas_cumprod) -> NoiseSchedule:
    """The library's schedule for exercises whose input is alphas_cumprod (betas = 1 - abar_t / abar_{t-1})."""
    prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    return NoiseSchedule.from_betas(1 - alphas_cumprod / prev)


def at(alphas_cumprod, t):
    """alphas_cumprod[t] shaped (B, 1, 1, 1), to broadcast over a batch of images."""
    return alphas_cumprod[t].reshape(-1, 1, 1, 1)


def z_v_cases():
    """(x_t, t, v) from the batch cases, exact and then with an imperfect v (used by notebooks 01 and 04)."""
    cases = []
    for label, c in batch_cases():
        s = from_betas(c["betas"])
        x_t = q_sample(c["x0"], c["t"], c["noise"], s)
        v = get_v(c["x0"], c["noise"], c["t"], s)
        cases.append((label, dict(x_t=x_t, t=c["t"], v=v, alphas_cumprod=s.alphas_cumprod)))
    for label, c in batch_cases()[:2]:  # an imperfect v estimate: x0_hat leaves [-1, 1]
        s = from_betas(c["betas"])
        x_t = q_sample(c["x0"], c["t"], c["noise"], s)
        v = get_v(c["x0"], c["noise"], c["t"], s) + 1.5 * torch.randn(c["x0"].shape, generator=gen(51), dtype=F64)
        cases.append((label + ", an imperfect v estimate (x0_hat outside [-1, 1])", dict(x_t=x_t, t=c["t"], v=v, alphas_cumprod=s.alphas_cumprod)))
    return cases


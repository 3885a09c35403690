"""Exercises of ``notebooks/exercises/12_edm_and_bound.ipynb``: EDM's four preconditioning coefficients and its loss
weight (Karras et al. 2022, Table 1), the KL divergence between two Gaussians and the weight that turns a term of the
variational bound into a noise error (Ho et al. 2020, Eq. 5 and 12). References: the library's functions, which
tests/test_edm.py and tests/test_vlb.py check against diffusers, torch.distributions and k-diffusion."""

from __future__ import annotations

import torch

from .. import edm, vlb
from ..schedules import NoiseSchedule
from .cases import gen, schedules
from .harness import F64, Exercise, register


def _sigmas():
    return [(f"sigma_data {d}", dict(sigma=torch.tensor([0.002, 0.1, 0.5, 1.0, 7.0, 80.0], dtype=F64), sigma_data=d))
            for d in (0.5, 0.75)]


register(
    Exercise(
        name="edm_preconditioning",
        signature="(sigma, sigma_data) -> (c_skip, c_out, c_in, c_noise)",
        reference=lambda sigma, sigma_data: edm.preconditioning(sigma, sigma_data),
        cases=_sigmas,
        mistakes=[
            (lambda sigma, sigma_data: (sigma_data**2 / (sigma**2 + sigma_data**2), sigma * sigma_data / (sigma**2 + sigma_data**2),
                                        1 / (sigma**2 + sigma_data**2).sqrt(), sigma.log() / 4),
             "c_out = sigma sigma_data / SQRT(sigma^2 + sigma_data^2): the target (x0 - c_skip x) / c_out must have unit variance."),
            (lambda sigma, sigma_data: (sigma_data**2 / (sigma**2 + sigma_data**2), sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt(),
                                        1 / (sigma**2 + 1).sqrt(), sigma.log() / 4),
             "c_in = 1 / sqrt(sigma^2 + sigma_data^2): x = x0 + sigma n has variance sigma_data^2 + sigma^2, not 1 + sigma^2."),
            (lambda sigma, sigma_data: (sigma**2 / (sigma**2 + sigma_data**2), sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt(),
                                        1 / (sigma**2 + sigma_data**2).sqrt(), sigma.log() / 4),
             "c_skip = sigma_data^2 / (sigma^2 + sigma_data^2): it goes to 1 at small sigma, where the input is nearly the answer."),
        ],
        hint="Karras et al. 2022, Table 1: c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2), c_noise = ln(s)/4.",
    )
)

register(
    Exercise(
        name="edm_loss_weight",
        signature="(sigma, sigma_data) -> lambda",
        reference=lambda sigma, sigma_data: edm.loss_weight(sigma, sigma_data),
        cases=_sigmas,
        mistakes=[
            (lambda sigma, sigma_data: (sigma**2 + sigma_data**2) / (sigma * sigma_data), "square the denominator: lambda = (s^2 + sd^2) / (s sd)^2 = 1 / c_out^2."),
            (lambda sigma, sigma_data: (sigma * sigma_data) ** 2 / (sigma**2 + sigma_data**2), "that is c_out^2; the weight is its inverse, 1 / c_out^2."),
            (lambda sigma, sigma_data: torch.ones_like(sigma), "a constant weight is L_simple's choice; EDM's is 1 / c_out^2, which makes the NETWORK's loss unweighted."),
        ],
        hint="lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Table 1): with it, lambda |D - x0|^2 = |F - target|^2.",
    )
)


def _kl_cases():
    cases = []
    for k in range(2):
        g = gen(950 + k)
        m1, m2 = torch.randn(6, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64)
        lv1, lv2 = torch.randn(6, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64)
        cases.append((f"6 pairs of Gaussians (seed {950 + k})", dict(mean1=m1, logvar1=lv1, mean2=m2, logvar2=lv2)))
    return cases


register(
    Exercise(
        name="gaussian_kl",
        signature="(mean1, logvar1, mean2, logvar2) -> kl",
        reference=lambda mean1, logvar1, mean2, logvar2: vlb.gaussian_kl(mean1, logvar1, mean2, logvar2),
        cases=_kl_cases,
        mistakes=[
            (lambda mean1, logvar1, mean2, logvar2: vlb.gaussian_kl(mean2, logvar2, mean1, logvar1), "KL is not symmetric: KL(q || p) with q = N(mean1, exp(logvar1)) first."),
            (lambda mean1, logvar1, mean2, logvar2: 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)),
             "the -1 inside the bracket: KL(p || p) must be 0."),
            (lambda mean1, logvar1, mean2, logvar2: 0.5 * (-1 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2), "the squared mean difference is divided by the second variance: (mu1 - mu2)^2 exp(-logvar2)."),
        ],
        hint="KL(N(m1, v1) || N(m2, v2)) = 1/2 (-1 + ln v2 - ln v1 + v1/v2 + (m1 - m2)^2 / v2), with v = exp(logvar).",
    )
)


def _weight_cases():
    return [(label, dict(betas=betas)) for label, betas in schedules()]


def _weight_ref(betas):
    return vlb.eps_weight(NoiseSchedule.from_betas(betas), "posterior")[1:]


register(
    Exercise(
        name="vlb_eps_weight",
        signature="(betas) -> weights for t = 1..T-1 (0-based; sigma_t^2 = posterior variance)",
        reference=_weight_ref,
        cases=_weight_cases,
        rtol=1e-9,
        mistakes=[
            (lambda betas: (lambda s: (s.betas ** 2 / (2 * s.betas * s.alphas * (1 - s.alphas_cumprod)))[1:])(NoiseSchedule.from_betas(betas)),
             "sigma_t^2 here is the posterior variance beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t, not beta_t."),
            (lambda betas: (lambda s: (s.betas ** 2 / (2 * s.posterior_variance * (1 - s.alphas_cumprod)))[1:])(NoiseSchedule.from_betas(betas)),
             "the denominator has alpha_t too: 2 sigma_t^2 alpha_t (1 - abar_t) (from the 1/sqrt(alpha_t) in mu_theta, squared)."),
            (lambda betas: (lambda s: (s.betas / (2 * s.posterior_variance * s.alphas * (1 - s.alphas_cumprod)))[1:])(NoiseSchedule.from_betas(betas)),
             "beta_t enters squared: mu~ - mu_theta = beta_t / (sqrt(alpha_t) sqrt(1 - abar_t)) (eps_theta - eps)."),
        ],
        hint="DDPM Eq. 12: L_{t-1} = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)) |eps - eps_theta|^2 + C; use the schedule's alphas, alphas_cumprod and posterior_variance.",
    )
)

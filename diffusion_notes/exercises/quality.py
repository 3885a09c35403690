"""Exercises of ``notebooks/exercises/09_quality.ipynb``: the Fréchet distance of two Gaussians
(Heusel et al. 2017, Eq. 6) and the accounting of model evaluations (NFE) for a sampler with guidance.

These two are kept out of the shared registry :data:`~diffusion_notes.exercises.EXERCISES` (they
are the quality lesson's own): import their checkers from here,
``from diffusion_notes.exercises.quality import check_frechet_distance_of_gaussians``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..quality.frechet import frechet_distance
from ..quality.nfe import count_model_evaluations
from .harness import F64, Exercise, checker

__all__ = ["FRECHET", "NFE", "check_frechet_distance_of_gaussians", "check_nfe_and_batch"]


def _gaussian_cases():
    g = torch.Generator().manual_seed(2017)
    cases = [("1-D: (mu1 - mu2)^2 + (s1 - s2)^2", dict(mu1=torch.tensor([1.0], dtype=F64), sigma1=torch.tensor([[4.0]], dtype=F64),
                                                        mu2=torch.tensor([-0.5], dtype=F64), sigma2=torch.tensor([[0.25]], dtype=F64)))]
    a, b = torch.rand(4, generator=g, dtype=F64) + 0.1, torch.rand(4, generator=g, dtype=F64) + 0.1
    cases.append(("diagonal covariances", dict(mu1=torch.randn(4, generator=g, dtype=F64), sigma1=torch.diag(a),
                                               mu2=torch.randn(4, generator=g, dtype=F64), sigma2=torch.diag(b))))
    m1, m2 = torch.randn(5, 5, generator=g, dtype=F64), torch.randn(5, 5, generator=g, dtype=F64)
    cases.append(("full covariances that do not commute", dict(mu1=torch.randn(5, generator=g, dtype=F64), sigma1=m1 @ m1.T + 0.1 * torch.eye(5, dtype=F64),
                                                                mu2=torch.randn(5, generator=g, dtype=F64), sigma2=m2 @ m2.T + 0.1 * torch.eye(5, dtype=F64))))
    return cases


def _frechet_reference(mu1, sigma1, mu2, sigma2):
    return torch.tensor(frechet_distance(mu1.numpy(), sigma1.numpy(), mu2.numpy(), sigma2.numpy()), dtype=F64)


def _psd_sqrt(m):
    values, vectors = torch.linalg.eigh(m)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def _product_of_roots(mu1, sigma1, mu2, sigma2):
    """Tr(S1^1/2 S2^1/2) instead of Tr((S1 S2)^1/2): right only when the covariances commute."""
    return ((mu1 - mu2) ** 2).sum() + torch.trace(sigma1 + sigma2 - 2 * _psd_sqrt(sigma1) @ _psd_sqrt(sigma2))


FRECHET = Exercise(
    name="frechet_distance_of_gaussians",
    signature="(mu1, sigma1, mu2, sigma2) -> d",
    reference=_frechet_reference,
    cases=_gaussian_cases,
    rtol=1e-6,
    atol=1e-9,
    mistakes=[
        (lambda mu1, sigma1, mu2, sigma2: _frechet_reference(mu1, sigma1, mu2, sigma2) - ((mu1 - mu2) ** 2).sum() + (mu1 - mu2).norm(),
         "the mean term is the SQUARED distance ||mu1 - mu2||^2, not the distance."),
        (lambda mu1, sigma1, mu2, sigma2: _frechet_reference(mu1, sigma1, mu2, sigma2) + torch.trace(torch.diag(torch.linalg.eigvals(sigma1 @ sigma2).real.clamp(min=0).sqrt())),
         "the cross term is -2 Tr((S1 S2)^1/2): did you forget the factor 2?"),
        (_product_of_roots,
         "Tr(S1^1/2 S2^1/2) equals Tr((S1 S2)^1/2) only when S1 and S2 commute (diagonal ones do); take the square root of the product, e.g. via the eigenvalues of S1^1/2 S2 S1^1/2."),
    ],
    hint="Heusel et al. 2017 Eq. 6: ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2). Tr((S1 S2)^1/2) is the sum of the square roots of the eigenvalues of the symmetric S1^1/2 S2 S1^1/2. Return one number.",
)


def _nfe_cases():
    return [(f"{sampler}, {steps} steps, guidance {scale}", dict(sampler=sampler, steps=steps, guidance_scale=scale))
            for sampler, steps, scale in [("euler", 10, 7.5), ("heun", 10, 7.5), ("dpmpp_2s_a", 8, 1.0), ("plms", 20, 7.5),
                                          ("pndm", 10, 7.5), ("ddim", 50, 1.0), ("dpmpp_2m", 15, 3.0), ("heun", 1, 1.0)]]


def _nfe_reference(sampler, steps, guidance_scale):
    return count_model_evaluations(sampler, steps), 2 if guidance_scale != 1 else 1


NFE = Exercise(
    name="nfe_and_batch",
    signature="(sampler, steps, guidance_scale) -> (nfe, rows_per_image)",
    reference=_nfe_reference,
    cases=_nfe_cases,
    rtol=0.0,
    atol=0.0,
    mistakes=[
        (lambda sampler, steps, guidance_scale: (count_model_evaluations(sampler, steps) * (2 if guidance_scale != 1 else 1), 2 if guidance_scale != 1 else 1),
         "guidance doubles the BATCH of each evaluation (conditional and unconditional in one call, as CompVis does), not the number of evaluations."),
        (lambda sampler, steps, guidance_scale: (2 * steps if sampler in ("heun", "dpmpp_2s_a") else count_model_evaluations(sampler, steps), 2 if guidance_scale != 1 else 1),
         "Heun (Karras Alg. 1) and DPM++ 2S skip the second evaluation on the last step (to sigma = 0): 2S - 1."),
        (lambda sampler, steps, guidance_scale: (steps if sampler in ("plms", "pndm") else count_model_evaluations(sampler, steps), 2 if guidance_scale != 1 else 1),
         "PLMS's first step is a pseudo improved Euler step (2 evaluations); PNDM's three warm-up steps are pseudo Runge-Kutta (4 each)."),
    ],
    hint="count network calls: 1 per step for DDPM/DDIM/Euler/LMS/DPM++ 2M/UniPC; Heun and DPM++ 2S 2 per step but 1 on the last; PLMS 1 more than its steps; PNDM 4 per warm-up step (3 of them) then 1. Guidance with scale != 1 evaluates [uncond, cond] in one batch of 2 rows per image.",
)

check_frechet_distance_of_gaussians = checker(FRECHET)
check_nfe_and_batch = checker(NFE)

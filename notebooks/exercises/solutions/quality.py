"""Reference solutions to notebooks/exercises/09_quality.ipynb, written from the formulas (no library call
they are checked against). ``tests/test_exercises_quality.py`` runs the checkers on them."""

import torch


def frechet_distance_of_gaussians(mu1, sigma1, mu2, sigma2):
    # Tr((S1 S2)^1/2) = sum of sqrt(eigenvalues of S1^1/2 S2 S1^1/2), a symmetric PSD matrix
    values, vectors = torch.linalg.eigh(sigma1)
    root1 = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    inner = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0)
    return ((mu1 - mu2) ** 2).sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2 * inner.sqrt().sum()


def nfe_and_batch(sampler, steps, guidance_scale):
    if sampler in ("heun", "dpmpp_2s_a"):
        nfe = 2 * steps - 1  # two evaluations per step, one on the last (to sigma = 0)
    elif sampler == "plms":
        nfe = steps + 1  # the first step is a pseudo improved Euler step
    elif sampler == "pndm":
        nfe = 4 * min(steps, 3) + max(steps - 3, 0)  # three pseudo Runge-Kutta warm-up steps
    else:
        nfe = steps
    return nfe, 2 if guidance_scale != 1 else 1

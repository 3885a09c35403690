"""Solutions of notebooks/exercises/12_edm_and_bound.ipynb (EDM's preconditioning and loss weight; the variational bound)."""

import torch

from diffusion_notes.schedules import NoiseSchedule


def edm_preconditioning(sigma, sigma_data):
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), torch.log(sigma) / 4


def edm_loss_weight(sigma, sigma_data):
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def gaussian_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def vlb_eps_weight(betas):
    s = NoiseSchedule.from_betas(betas)
    weight = s.betas**2 / (2 * s.posterior_variance * s.alphas * (1 - s.alphas_cumprod))
    return weight[1:]

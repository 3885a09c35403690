"""Reference solutions to the exercises in notebooks/exercises (kept apart from the exercises).

Each function is written from the formula, the way a student would write it, without calling the
library function it is checked against. ``tests/test_exercises.py`` runs every checker on these.
"""

from fractions import Fraction

import torch


def _at(buffer, t):
    """buffer[t] reshaped to (B, 1, 1, 1) so it broadcasts over a batch of images."""
    return buffer[t].reshape(-1, 1, 1, 1)


# --- 01_schedules_and_forward -------------------------------------------------------------


def alphas_cumprod(betas):
    return torch.cumprod(1 - betas, dim=0)


def alphas_cumprod_prev(alphas_cumprod):
    return torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])


def snr(alphas_cumprod):
    return alphas_cumprod / (1 - alphas_cumprod)


def q_sample(x0, t, noise, alphas_cumprod):
    a = _at(alphas_cumprod, t)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def posterior_mean_variance(x0, x_t, t, betas):
    alphas = 1 - betas
    a = torch.cumprod(alphas, 0)
    a_prev = torch.cat([a.new_ones(1), a[:-1]])
    coef1 = _at(a_prev.sqrt() * betas / (1 - a), t)
    coef2 = _at(alphas.sqrt() * (1 - a_prev) / (1 - a), t)
    variance = _at(betas * (1 - a_prev) / (1 - a), t)
    return coef1 * x0 + coef2 * x_t, variance


def predict_start_from_noise(x_t, t, noise, alphas_cumprod):
    a = _at(alphas_cumprod, t)
    return (x_t - (1 - a).sqrt() * noise) / a.sqrt()


def get_v(x0, noise, t, alphas_cumprod):
    a = _at(alphas_cumprod, t)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def predict_start_from_z_and_v(x_t, t, v, alphas_cumprod):
    a = _at(alphas_cumprod, t)
    return a.sqrt() * x_t - (1 - a).sqrt() * v


# --- 02_training_and_ddim -----------------------------------------------------------------


def l_simple(eps_model, x0, t, noise, alphas_cumprod):
    return torch.mean((eps_model(q_sample(x0, t, noise, alphas_cumprod), t) - noise) ** 2)


def ddim_sigma(a_t, a_prev, eta):
    return eta * ((1 - a_prev) / (1 - a_t)) ** 0.5 * (1 - a_t / a_prev) ** 0.5


def ddim_step(x, e_t, a_t, a_prev, sigma_t, noise):
    pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
    dir_xt = (1 - a_prev - sigma_t**2) ** 0.5 * e_t
    return a_prev**0.5 * pred_x0 + dir_xt + sigma_t * noise


def ddim_timesteps(num_steps, num_train_timesteps):
    c = num_train_timesteps // num_steps
    return torch.arange(0, num_train_timesteps, c) + 1


# --- 03_multistep_and_guidance ------------------------------------------------------------


def adams_bashforth_coefficients(order):
    nodes = [Fraction(-j) for j in range(order)]
    coefficients = []
    for j, s_j in enumerate(nodes):
        basis = [Fraction(1)]  # polynomial coefficients, lowest degree first
        for m, s_m in enumerate(nodes):
            if m == j:
                continue
            factor = [-s_m / (s_j - s_m), 1 / (s_j - s_m)]
            product = [Fraction(0)] * (len(basis) + 1)
            for i, b in enumerate(basis):
                product[i] += b * factor[0]
                product[i + 1] += b * factor[1]
            basis = product
        coefficients.append(sum(c / (n + 1) for n, c in enumerate(basis)))
    return coefficients


def _ddim(x, e, a_t, a_prev):
    return a_prev**0.5 * (x - (1 - a_t) ** 0.5 * e) / a_t**0.5 + (1 - a_prev) ** 0.5 * e


def pseudo_improved_euler(eps_fn, x, t, t_next, a_t, a_prev):
    e_t = eps_fn(x, t)
    e_next = eps_fn(_ddim(x, e_t, a_t, a_prev), t_next)
    return _ddim(x, (e_t + e_next) / 2, a_t, a_prev)


def classifier_free_guidance(e_uncond, e_cond, scale):
    return e_uncond + scale * (e_cond - e_uncond)

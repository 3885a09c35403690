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


# --- 04_samplers_training_attention -------------------------------------------------------


def ddpm_ancestral_step(x, e_t, a_t, a_prev, noise):
    beta = 1 - a_t / a_prev  # the step's own beta (equal to beta_t for consecutive steps)
    pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
    mean = a_prev**0.5 * beta / (1 - a_t) * pred_x0 + (1 - beta) ** 0.5 * (1 - a_prev) / (1 - a_t) * x
    variance = (1 - a_prev) / (1 - a_t) * beta
    return mean + variance**0.5 * noise


_AB = {1: (3 / 2, -1 / 2), 2: (23 / 12, -16 / 12, 5 / 12), 3: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def plms_step_with_history(x, e_t, old_eps, a_t, a_prev):
    coefficients = _AB[min(len(old_eps), 3)]
    history = [e_t] + list(reversed(old_eps))  # newest first
    e_prime = sum(c * e for c, e in zip(coefficients, history))
    return _ddim(x, e_prime, a_t, a_prev), (list(old_eps) + [e_t])[-3:]


def training_step(eps_model, params, x0, t, noise, alphas_cumprod, lr):
    params = params.detach().clone().requires_grad_(True)
    x_t = q_sample(x0, t, noise, alphas_cumprod)
    loss = torch.mean((eps_model(params, x_t, t) - noise) ** 2)
    (grad,) = torch.autograd.grad(loss, params)
    return loss.detach(), (params - lr * grad).detach()


def cross_attention(x, context, W_q, W_k, W_v, heads):
    q, k, v = x @ W_q, context @ W_k, context @ W_v
    batch, n, inner = q.shape
    d = inner // heads

    def split(m):  # (B, N, heads * d) -> (B, heads, N, d)
        return m.reshape(batch, m.shape[1], heads, d).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)  # over the prompt tokens
    return (weights @ v).transpose(1, 2).reshape(batch, n, inner)


def x0_and_eps_from_v(x_t, t, v, alphas_cumprod):
    cos, sin = _at(alphas_cumprod, t).sqrt(), (1 - _at(alphas_cumprod, t)).sqrt()
    return cos * x_t - sin * v, sin * x_t + cos * v


# --- 05_sigma_view ------------------------------------------------------------------------


def to_sigma_view(x_t, t, alphas_cumprod):
    a = alphas_cumprod[t]
    return x_t / a.sqrt().reshape(-1, 1, 1, 1), ((1 - a) / a).sqrt()


def euler_step_in_sigma(x_bar, eps, sigma, sigma_next):
    return x_bar + (sigma_next - sigma) * eps


def ancestral_sigmas(sigma, sigma_next, eta):
    sigma_up = min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    return (sigma_next**2 - sigma_up**2) ** 0.5, sigma_up


def karras_sigmas(n, sigma_min, sigma_max, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho

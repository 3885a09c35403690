"""Exercises of ``notebooks/exercises/02_training_and_ddim.ipynb``: the loss L_simple (DDPM Eq. 14),
DDIM's sigma_t (Eq. 16) and step (Eq. 12), and CompVis's uniform DDIM timesteps."""

from __future__ import annotations

import torch

from ..losses import p_losses
from ..samplers import ddim_sigma, ddim_step, make_timesteps
from ..schedules import NoiseSchedule
from .cases import at, batch_cases, from_alphas_cumprod, from_betas, gen
from .harness import F64, Exercise, register


# L_simple


def _toy_eps_model(x, t):
    """A fixed stand-in for a network: linear in x, with a dependence on t."""
    return 0.5 * x + 1e-3 * t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) - 0.1


def _l_simple_cases():
    return [(label, dict(eps_model=_toy_eps_model, x0=c["x0"], t=c["t"], noise=c["noise"], alphas_cumprod=from_betas(c["betas"]).alphas_cumprod)) for label, c in batch_cases()]


def _l_simple_variant(eps_model, x0, t, noise, alphas_cumprod, target="eps", reduce="mean", model_input="x_t"):
    a = at(alphas_cumprod, t)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    prediction = eps_model(x_t if model_input == "x_t" else x0, t)
    err = (prediction - (noise if target == "eps" else x0)) ** 2
    return err.mean() if reduce == "mean" else err.sum()


register(
    Exercise(
        name="l_simple",
        signature="(eps_model, x0, t, noise, alphas_cumprod) -> scalar loss",
        reference=lambda eps_model, x0, t, noise, alphas_cumprod: p_losses(eps_model, x0, t, from_alphas_cumprod(alphas_cumprod), noise=noise),
        cases=_l_simple_cases,
        rtol=1e-5,
        mistakes=[
            (lambda **kw: _l_simple_variant(**kw, target="x0"), "the target is the noise eps, not x0 (DDPM Eq. 14 predicts eps)."),
            (lambda **kw: _l_simple_variant(**kw, reduce="sum"), "take the mean over all elements (CompVis/diffusers use mse with mean reduction), not the sum."),
            (lambda **kw: _l_simple_variant(**kw, model_input="x0"), "the model must see the NOISY x_t = sqrt(abar) x0 + sqrt(1-abar) eps, not x0."),
        ],
        hint="DDPM Eq. 14: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; loss = mean((eps_model(x_t, t) - eps)^2).",
    )
)

# ddim_sigma


def _alpha_pairs():
    a = NoiseSchedule.stable_diffusion().alphas_cumprod
    ts = make_timesteps(10, 1000, "uniform")
    a_t, a_prev = a[ts], torch.cat([a[:1], a[ts[:-1]]])
    return [
        ("SD schedule, 10 uniform steps, eta=0", dict(a_t=a_t, a_prev=a_prev, eta=0.0)),
        ("SD schedule, 10 uniform steps, eta=1", dict(a_t=a_t, a_prev=a_prev, eta=1.0)),
        ("SD schedule, 10 uniform steps, eta=0.5", dict(a_t=a_t, a_prev=a_prev, eta=0.5)),
        ("a single pair of numbers, eta=0.3", dict(a_t=torch.tensor(0.2, dtype=F64), a_prev=torch.tensor(0.6, dtype=F64), eta=0.3)),
    ]


register(
    Exercise(
        name="ddim_sigma",
        signature="(a_t, a_prev, eta) -> sigma_t",
        reference=ddim_sigma,
        cases=_alpha_pairs,
        mistakes=[
            (lambda a_t, a_prev, eta: eta * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev), "missing square root: that is eta * sigma^2-like; sigma_t = eta * sqrt((1-a_prev)/(1-a_t)) * sqrt(1 - a_t/a_prev)."),
            (lambda a_t, a_prev, eta: eta**2 * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5, "eta multiplies the standard deviation, not squared."),
            (lambda a_t, a_prev, eta: eta * ((1 - a_t) / (1 - a_prev) * (1 - a_prev / a_t)).abs() ** 0.5, "a_t and a_prev are swapped (a_prev > a_t: the previous step is LESS noisy)."),
            (lambda a_t, a_prev, eta: eta * (1 - a_t / a_prev) ** 0.5, "you dropped the factor sqrt((1 - a_prev) / (1 - a_t)); with it, eta = 1 gives the DDPM posterior variance."),
        ],
        hint="DDIM Eq. 16: sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev).",
    )
)

# ddim_step


def _ddim_step_cases():
    a = NoiseSchedule.stable_diffusion().alphas_cumprod
    cases = []
    for k, (t, t_prev, eta) in enumerate([(981, 961, 0.0), (501, 401, 0.0), (501, 401, 1.0), (21, 1, 0.5)]):
        g = gen(100 + k)
        x = torch.randn(3, 2, 4, 4, generator=g, dtype=F64)
        e_t = torch.randn(3, 2, 4, 4, generator=g, dtype=F64)
        noise = torch.randn(3, 2, 4, 4, generator=g, dtype=F64)
        a_t, a_prev = float(a[t]), float(a[t_prev])
        sigma_t = float(ddim_sigma(a_t, a_prev, eta))
        cases.append((f"t={t} -> {t_prev}, eta={eta}", dict(x=x, e_t=e_t, a_t=a_t, a_prev=a_prev, sigma_t=sigma_t, noise=noise)))
    return cases


def _ddim_variant(x, e_t, a_t, a_prev, sigma_t, noise, dir_sigma=True, add_noise=True, sqrt_prev=True):
    pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
    dir_xt = (1 - a_prev - (sigma_t**2 if dir_sigma else 0)) ** 0.5 * e_t
    out = (a_prev**0.5 if sqrt_prev else a_prev) * pred_x0 + dir_xt
    return out + sigma_t * noise if add_noise else out


register(
    Exercise(
        name="ddim_step",
        signature="(x, e_t, a_t, a_prev, sigma_t, noise) -> x_prev",
        reference=lambda x, e_t, a_t, a_prev, sigma_t, noise: ddim_step(x, e_t, a_t, a_prev, sigma_t, noise)[0],
        cases=_ddim_step_cases,
        mistakes=[
            (lambda **kw: _ddim_variant(**kw, dir_sigma=False), "the direction term is sqrt(1 - a_prev - sigma_t^2) * e_t: the noise added by sigma_t must be taken out of it, or x_prev has too much variance."),
            (lambda **kw: _ddim_variant(**kw, add_noise=False), "when sigma_t > 0, add the random term sigma_t * noise."),
            (lambda **kw: _ddim_variant(**kw, sqrt_prev=False), "re-noise pred_x0 with sqrt(a_prev), not a_prev."),
        ],
        hint="DDIM Eq. 12: pred_x0 = (x - sqrt(1 - a_t) e_t) / sqrt(a_t); x_prev = sqrt(a_prev) pred_x0 + sqrt(1 - a_prev - sigma_t^2) e_t + sigma_t noise.",
    )
)

# DDIM timesteps (CompVis uniform)

register(
    Exercise(
        name="ddim_timesteps",
        signature="(num_steps, num_train_timesteps) -> ascending integer timesteps",
        reference=lambda num_steps, num_train_timesteps: torch.as_tensor(make_timesteps(num_steps, num_train_timesteps, "uniform")),
        cases=lambda: [(f"S={s}, T={T}", dict(num_steps=s, num_train_timesteps=T)) for s, T in [(10, 1000), (50, 1000), (250, 1000), (7, 1000), (20, 100)]],
        mistakes=[
            (lambda num_steps, num_train_timesteps: torch.arange(0, num_train_timesteps, num_train_timesteps // num_steps), "CompVis adds 1: range(0, T, T // S) + 1 (so the last step reaches t = 1 and its 'previous alpha' is alphas_cumprod[0])."),
            (lambda num_steps, num_train_timesteps: torch.linspace(0, num_train_timesteps - 1, num_steps).round().long(), "that is the 'linspace' spacing; CompVis's uniform is range(0, T, T // S) + 1."),
            (lambda num_steps, num_train_timesteps: (torch.arange(num_steps) * (num_train_timesteps // num_steps) + 1), "range keeps the remainder: with S = 7, T // S = 142 and range(0, 1000, 142) has 8 elements. Use range, not S multiples."),
        ],
        hint="CompVis make_ddim_timesteps('uniform'): c = T // S; timesteps = range(0, T, c) + 1.",
    )
)

"""Exercises of ``notebooks/exercises/05_sigma_view.ipynb``: x_t in the sigma view (DDIM Eq. 14,
Karras et al. 2022), one Euler step in sigma, the ancestral split (sigma_down, sigma_up) and the
Karras sigmas."""

from __future__ import annotations

import torch

from ..forward import q_sample
from ..schedules import NoiseSchedule
from .cases import at, batch_cases, from_alphas_cumprod, from_betas, gen
from .harness import F64, Exercise, register


# to the sigma view


def _sigma_view_cases():
    return [(label, dict(x_t=q_sample(c["x0"], c["t"], c["noise"], from_betas(c["betas"])), t=c["t"], alphas_cumprod=from_betas(c["betas"]).alphas_cumprod))
            for label, c in batch_cases()[:2]]


def _sigma_view_ref(x_t, t, alphas_cumprod):
    s = from_alphas_cumprod(alphas_cumprod)
    return x_t / s.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1), s.sigmas[t]


register(
    Exercise(
        name="to_sigma_view",
        signature="(x_t, t, alphas_cumprod) -> (x_bar, sigma)",
        reference=_sigma_view_ref,
        cases=_sigma_view_cases,
        rtol=1e-6,
        mistakes=[
            (lambda x_t, t, alphas_cumprod: (x_t / at(alphas_cumprod, t).sqrt(), (1 - alphas_cumprod[t]).sqrt()), "x_bar is right; sigma is the noise level of x_bar = x_t / sqrt(abar), so divide the noise std too: sigma = sqrt((1 - abar) / abar)."),
            (lambda x_t, t, alphas_cumprod: (x_t * at(alphas_cumprod, t).sqrt(), ((1 - alphas_cumprod[t]) / alphas_cumprod[t]).sqrt()), "sigma is right; x_bar = x_t / sqrt(abar) (DIVIDE, so that x_bar = x0 + sigma eps)."),
            (lambda x_t, t, alphas_cumprod: (x_t / at(alphas_cumprod, t).sqrt(), (1 - alphas_cumprod[t]) / alphas_cumprod[t]), "that is sigma^2; sigma is its square root."),
        ],
        hint="divide DDPM Eq. 4 by sqrt(abar_t): x_t / sqrt(abar) = x0 + sqrt((1 - abar)/abar) eps = x0 + sigma eps (DDIM Eq. 14, Karras et al. 2022). Return sigma with one value per batch element, shape (B,).",
    )
)

# one Euler step in sigma (issue 9)


def _euler_sigma_cases():
    sigmas = NoiseSchedule.stable_diffusion().sigmas
    cases = []
    for k, (t, t_next) in enumerate([(999, 899), (500, 400), (100, 0)]):
        g = gen(700 + k)
        sigma, sigma_next = float(sigmas[t]), float(sigmas[t_next])
        x_bar = sigma * torch.randn(3, 2, 4, 4, generator=g, dtype=F64)
        eps = torch.randn(3, 2, 4, 4, generator=g, dtype=F64)
        cases.append((f"sigma {sigma:.3g} -> {sigma_next:.3g} (SD's t={t} -> {t_next})", dict(x_bar=x_bar, eps=eps, sigma=sigma, sigma_next=sigma_next)))
    cases.append(("the last step, to sigma = 0", dict(x_bar=cases[-1][1]["x_bar"], eps=cases[-1][1]["eps"], sigma=float(sigmas[0]), sigma_next=0.0)))
    return cases


register(
    Exercise(
        name="euler_step_in_sigma",
        signature="(x_bar, eps, sigma, sigma_next) -> x_bar_next",
        reference=lambda x_bar, eps, sigma, sigma_next: x_bar + (sigma_next - sigma) * eps,
        cases=_euler_sigma_cases,
        mistakes=[
            (lambda x_bar, eps, sigma, sigma_next: x_bar + (sigma - sigma_next) * eps, "sign: sigma DEcreases, and dx_bar/dsigma = eps, so x_bar_next = x_bar + (sigma_next - sigma) eps (a negative multiple of eps)."),
            (lambda x_bar, eps, sigma, sigma_next: x_bar + (sigma_next**2 - sigma**2) * eps, "step in sigma, not in sigma^2: the probability-flow ODE is dx_bar/dsigma = eps."),
            (lambda x_bar, eps, sigma, sigma_next: x_bar - sigma * eps, "x_bar - sigma eps is the x0 estimate; the step only goes to sigma_next: x_bar + (sigma_next - sigma) eps."),
        ],
        hint="the probability-flow ODE in the sigma view is dx_bar/dsigma = eps(x_bar, sigma) (DDIM Eq. 14); one Euler step: x_bar_next = x_bar + (sigma_next - sigma) eps. k-diffusion: sample_euler with d = (x - denoised) / sigma = eps.",
    )
)

# the ancestral split sigma_down, sigma_up (issue 9)


def _ancestral_ref(sigma, sigma_next, eta):
    """k-diffusion ``get_ancestral_step``, transcribed."""
    if not eta:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    return (sigma_next**2 - sigma_up**2) ** 0.5, sigma_up


def _ancestral_cases():
    sigmas = NoiseSchedule.stable_diffusion().sigmas
    pairs = [(999, 949, 1.0), (500, 450, 1.0), (200, 100, 0.5), (50, 0, 1.0), (300, 250, 0.0), (600, 300, 2.0)]
    cases = [(f"sigma {float(sigmas[a]):.4g} -> {float(sigmas[b]):.4g}, eta={eta}", dict(sigma=float(sigmas[a]), sigma_next=float(sigmas[b]), eta=eta)) for a, b, eta in pairs]
    return cases + [(f"sigma {float(sigmas[50]):.4g} -> 0 (the last step), eta=1.0", dict(sigma=float(sigmas[50]), sigma_next=0.0, eta=1.0))]


def _ancestral_variant(sigma, sigma_next, eta, kind):
    up = eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    if kind == "no_min":
        return (max(sigma_next**2 - up**2, 0.0)) ** 0.5, up
    up = min(sigma_next, up)
    if kind == "linear_down":
        return sigma_next - up, up
    if kind == "no_eta":
        up = min(sigma_next, (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    return (sigma_next**2 - up**2) ** 0.5, up


register(
    Exercise(
        name="ancestral_sigmas",
        signature="(sigma, sigma_next, eta) -> (sigma_down, sigma_up)",
        reference=_ancestral_ref,
        cases=_ancestral_cases,
        rtol=1e-9,
        mistakes=[
            (lambda **kw: _ancestral_variant(**kw, kind="linear_down"), "variances add, not standard deviations: sigma_down = sqrt(sigma_next^2 - sigma_up^2)."),
            (lambda **kw: _ancestral_variant(**kw, kind="no_eta"), "sigma_up scales with eta (eta = 0: no noise, sigma_down = sigma_next; eta = 1: the DDPM-like amount)."),
            (lambda **kw: _ancestral_variant(**kw, kind="no_min"), "cap sigma_up at sigma_next (min(sigma_next, ...)): with eta > 1 the formula asks for more noise than the target level holds."),
        ],
        hint="k-diffusion get_ancestral_step: sigma_up = min(sigma_next, eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)); sigma_down = sqrt(sigma_next^2 - sigma_up^2). Step deterministically to sigma_down, then add sigma_up * noise: the total variance is sigma_next^2.",
    )
)

# the Karras sigmas (issue 9)


def _karras_ref(n, sigma_min, sigma_max, rho=7.0):
    i = torch.arange(n, dtype=F64)
    return (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def _karras_cases():
    sigmas = NoiseSchedule.stable_diffusion().sigmas
    lo, hi = float(sigmas[0]), float(sigmas[-1])
    return [(f"n={n}, sigma in [{a:.4g}, {b:.4g}], rho={rho}", dict(n=n, sigma_min=a, sigma_max=b, rho=rho))
            for n, a, b, rho in [(10, lo, hi, 7.0), (25, lo, hi, 7.0), (5, 0.002, 80.0, 7.0), (8, 0.1, 10.0, 3.0)]]


register(
    Exercise(
        name="karras_sigmas",
        signature="(n, sigma_min, sigma_max, rho) -> n sigmas, descending",
        reference=_karras_ref,
        cases=_karras_cases,
        rtol=1e-9,
        mistakes=[
            (lambda n, sigma_min, sigma_max, rho: _karras_ref(n, sigma_min, sigma_max, rho).flip(0), "the order is reversed: a sampler starts at sigma_max (i = 0) and ends at sigma_min (i = n - 1)."),
            (lambda n, sigma_min, sigma_max, rho: torch.cat([_karras_ref(n, sigma_min, sigma_max, rho), torch.zeros(1, dtype=F64)]), "return exactly n values; k-diffusion's get_sigmas_karras appends the final 0 separately (append_zero)."),
            (lambda n, sigma_min, sigma_max, rho: (sigma_max**rho + torch.arange(n, dtype=F64) / (n - 1) * (sigma_min**rho - sigma_max**rho)) ** (1 / rho), "the exponents are inverted: interpolate sigma^(1/rho) linearly, then raise to the power rho."),
            (lambda n, sigma_min, sigma_max, rho: (sigma_max ** (1 / rho) + torch.arange(n, dtype=F64) / n * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho, "the ramp is i / (n - 1), so that the last value is exactly sigma_min."),
        ],
        hint="Karras et al. 2022 Eq. 5: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i = 0..n-1, rho = 7 (k-diffusion get_sigmas_karras, without its appended 0).",
    )
)

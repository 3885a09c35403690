"""Exercises of ``notebooks/exercises/01_schedules_and_forward.ipynb``: the schedule buffers
(alphas_cumprod, alphas_cumprod_prev, SNR), the forward process q(x_t | x0), its posterior, and the
eps- and v-parameterisations (DDPM Sections 2-3, Salimans & Ho 2022)."""

from __future__ import annotations

import torch

from ..forward import get_v, predict_start_from_noise, predict_start_from_z_and_v, q_posterior_mean_variance, q_sample
from .cases import at, batch_cases, from_alphas_cumprod, from_betas, gen, schedules, z_v_cases
from .harness import F64, Exercise, register


# alphas_cumprod

register(
    Exercise(
        name="alphas_cumprod",
        signature="(betas) -> alphas_cumprod",
        reference=lambda betas: from_betas(betas).alphas_cumprod,
        cases=lambda: [(label, dict(betas=b)) for label, b in schedules()],
        mistakes=[
            (lambda betas: torch.cumprod(betas, 0), "you multiplied the betas; alpha_bar_t is the product of alpha_s = 1 - beta_s."),
            (lambda betas: 1 - torch.cumsum(betas, 0), "1 - sum(beta) is only the first-order approximation of prod(1 - beta); use torch.cumprod."),
            (lambda betas: torch.cat([betas.new_ones(1), torch.cumprod(1 - betas, 0)[:-1]]), "that is alphas_cumprod_prev (shifted by one); alpha_bar_t includes step t itself."),
            (lambda betas: torch.prod(1 - betas).expand_as(betas), "you need the cumulative product (one value per t), not the total product."),
        ],
        hint="alpha_bar_t = prod_{s <= t} (1 - beta_s), a running product: torch.cumprod(1 - betas, dim=0).",
    )
)

# alphas_cumprod_prev

register(
    Exercise(
        name="alphas_cumprod_prev",
        signature="(alphas_cumprod) -> alphas_cumprod_prev",
        reference=lambda alphas_cumprod: torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]]),
        cases=lambda: [(label, dict(alphas_cumprod=from_betas(b).alphas_cumprod)) for label, b in schedules()],
        mistakes=[
            (lambda alphas_cumprod: torch.cat([alphas_cumprod[1:], alphas_cumprod[-1:]]), "shifted the wrong way: prev[t] must be alphas_cumprod[t-1] (the LESS noisy step), so the shift goes right and 1 enters at t = 0."),
            (lambda alphas_cumprod: torch.cat([alphas_cumprod[1:], alphas_cumprod.new_ones(1)]), "shifted the wrong way: prev[t] = alphas_cumprod[t-1], with prev[0] = 1 at the front, not at the end."),
            (lambda alphas_cumprod: torch.cat([alphas_cumprod.new_zeros(1), alphas_cumprod[:-1]]), "the first entry is alpha_bar_0 = 1 (no noise before the first step), not 0."),
            (lambda alphas_cumprod: torch.cat([alphas_cumprod[:1], alphas_cumprod[:-1]]), "prev[0] is 1 (DDPM's alpha_bar_0 = 1), not alphas_cumprod[0]; (alphas_cumprod[0] as 'previous alpha' is a DDIM sampler convention, not this buffer)."),
        ],
        hint="prepend a 1 and drop the last element: torch.cat([ones(1), alphas_cumprod[:-1]]).",
    )
)

# snr

register(
    Exercise(
        name="snr",
        signature="(alphas_cumprod) -> snr",
        reference=lambda alphas_cumprod: alphas_cumprod / (1 - alphas_cumprod),
        cases=lambda: [(label, dict(alphas_cumprod=from_betas(b).alphas_cumprod)) for label, b in schedules()],
        mistakes=[
            (lambda alphas_cumprod: (1 - alphas_cumprod) / alphas_cumprod, "upside down: that is the noise-to-signal ratio (sigma^2); SNR = signal variance / noise variance."),
            (lambda alphas_cumprod: (alphas_cumprod / (1 - alphas_cumprod)).sqrt(), "missing the square: SNR is a ratio of VARIANCES, alpha_bar / (1 - alpha_bar), not of standard deviations."),
            (lambda alphas_cumprod: torch.log(alphas_cumprod / (1 - alphas_cumprod)), "that is log SNR; return the SNR itself."),
        ],
        hint="x_t = sqrt(abar) x0 + sqrt(1 - abar) eps: the signal variance is abar, the noise variance 1 - abar.",
    )
)

# q_sample


def _q_sample_cases():
    return [(label, dict(x0=c["x0"], t=c["t"], noise=c["noise"], alphas_cumprod=from_betas(c["betas"]).alphas_cumprod)) for label, c in batch_cases()]


def _q_sample_ref(x0, t, noise, alphas_cumprod):
    a = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


register(
    Exercise(
        name="q_sample",
        signature="(x0, t, noise, alphas_cumprod) -> x_t",
        reference=lambda x0, t, noise, alphas_cumprod: q_sample(x0, t, noise, from_alphas_cumprod(alphas_cumprod)),
        cases=_q_sample_cases,
        mistakes=[
            (lambda x0, t, noise, alphas_cumprod: alphas_cumprod[t].reshape(-1, 1, 1, 1) * x0 + (1 - alphas_cumprod[t].reshape(-1, 1, 1, 1)) * noise, "you used the variances abar and 1 - abar as coefficients; the coefficients are the standard deviations sqrt(abar) and sqrt(1 - abar)."),
            (lambda x0, t, noise, alphas_cumprod: alphas_cumprod[t].reshape(-1, 1, 1, 1).sqrt() * x0 + (1 - alphas_cumprod[t].reshape(-1, 1, 1, 1)) * noise, "the noise coefficient is sqrt(1 - abar) (a standard deviation), not 1 - abar."),
            (lambda x0, t, noise, alphas_cumprod: _q_sample_ref(x0, (t - 1).clamp(min=0), noise, alphas_cumprod), "off by one: the buffers are indexed by t itself (0-based), use alphas_cumprod[t]."),
        ],
        hint="DDPM Eq. 4: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, with abar_t = alphas_cumprod[t] reshaped to (B, 1, 1, 1) so it broadcasts over each image.",
    )
)

# posterior mean and variance


def _posterior_ref(x0, x_t, t, betas):
    mean, variance, _ = q_posterior_mean_variance(x0, x_t, t, from_betas(betas))
    return mean, variance


def _posterior_cases():
    cases = []
    for label, c in batch_cases():
        s = from_betas(c["betas"])
        x_t = q_sample(c["x0"], c["t"], c["noise"], s)
        cases.append((label, dict(x0=c["x0"], x_t=x_t, t=c["t"], betas=c["betas"])))
    return cases


def _posterior_with(x0, x_t, t, betas, coef2_sqrt=True, variance="posterior", prev_shift="right"):
    alphas = 1 - betas
    a = torch.cumprod(alphas, 0)
    if prev_shift == "right":
        a_prev = torch.cat([a.new_ones(1), a[:-1]])
    else:
        a_prev = torch.cat([a[1:], a[-1:]])
    r = lambda buf: buf[t].reshape(-1, 1, 1, 1)  # noqa: E731
    coef1 = r(a_prev.sqrt() * betas / (1 - a))
    coef2 = r((alphas.sqrt() if coef2_sqrt else alphas) * (1 - a_prev) / (1 - a))
    var = r(betas * (1 - a_prev) / (1 - a)) if variance == "posterior" else r(betas)
    return coef1 * x0 + coef2 * x_t, var


register(
    Exercise(
        name="posterior_mean_variance",
        signature="(x0, x_t, t, betas) -> (mean, variance)",
        reference=_posterior_ref,
        cases=_posterior_cases,
        broadcast_ok=True,
        mistakes=[
            (lambda **kw: _posterior_with(**kw, variance="beta"), "the mean is right but the variance is beta_t: that is the OTHER reverse-process choice (sigma^2 = beta); the posterior variance is beta_tilde = (1 - abar_{t-1}) / (1 - abar_t) * beta_t (Eq. 7)."),
            (lambda **kw: _posterior_with(**kw, coef2_sqrt=False), "the x_t coefficient has sqrt(alpha_t), not alpha_t: sqrt(alpha_t)(1 - abar_{t-1}) / (1 - abar_t)."),
            (lambda **kw: _posterior_with(**kw, prev_shift="left"), "abar_{t-1} is shifted the wrong way: it must be alphas_cumprod[t-1], with 1 at t = 0."),
        ],
        hint="DDPM Eq. 7: mean = sqrt(abar_{t-1}) beta_t / (1 - abar_t) * x0 + sqrt(alpha_t)(1 - abar_{t-1}) / (1 - abar_t) * x_t, variance = (1 - abar_{t-1}) / (1 - abar_t) * beta_t; index every buffer with t and reshape to (B, 1, 1, 1). At t = 0 the variance is 0.",
    )
)

# predict_start_from_noise


def _x_t_cases():
    cases = []
    for label, c in batch_cases():
        s = from_betas(c["betas"])
        x_t = q_sample(c["x0"], c["t"], c["noise"], s)
        cases.append((label, dict(x_t=x_t, t=c["t"], noise=c["noise"], alphas_cumprod=s.alphas_cumprod)))
    # a network's estimate is never the exact noise: then x0_hat leaves [-1, 1] (and a clamp would change it)
    for label, c in batch_cases()[:2]:
        s = from_betas(c["betas"])
        x_t = q_sample(c["x0"], c["t"], c["noise"], s)
        estimate = 0.7 * c["noise"] + 0.5 * torch.randn(c["noise"].shape, generator=gen(50), dtype=F64)
        cases.append((label + ", an imperfect noise estimate (x0_hat outside [-1, 1])", dict(x_t=x_t, t=c["t"], noise=estimate, alphas_cumprod=s.alphas_cumprod)))
    return cases


register(
    Exercise(
        name="predict_start_from_noise",
        signature="(x_t, t, noise, alphas_cumprod) -> x0",
        reference=lambda x_t, t, noise, alphas_cumprod: predict_start_from_noise(x_t, t, noise, from_alphas_cumprod(alphas_cumprod)),
        cases=_x_t_cases,
        mistakes=[
            (lambda x_t, t, noise, alphas_cumprod: x_t - (1 - at(alphas_cumprod, t)).sqrt() * noise, "you removed the noise but forgot to divide by sqrt(abar_t): x_t carries x0 scaled by sqrt(abar_t)."),
            (lambda x_t, t, noise, alphas_cumprod: (x_t - (1 - at(alphas_cumprod, t)) * noise) / at(alphas_cumprod, t).sqrt(), "the noise coefficient is sqrt(1 - abar_t), not 1 - abar_t."),
            (lambda x_t, t, noise, alphas_cumprod: (x_t - (1 - at(alphas_cumprod, t)).sqrt() * noise) / at(alphas_cumprod, t), "divide by sqrt(abar_t), not abar_t."),
            (lambda x_t, t, noise, alphas_cumprod: ((x_t - (1 - at(alphas_cumprod, t)).sqrt() * noise) / at(alphas_cumprod, t).sqrt()).clamp(-1, 1), "do not clamp: the formula is exact, and with an imperfect noise estimate x0_hat leaves [-1, 1]. Clipping is a separate, optional step (CompVis clip_denoised, diffusers clip_sample), used for pixel-space models only, never for SD's latents."),
        ],
        hint="solve DDPM Eq. 4 for x0: x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps. The checker compares with diffusion_notes.predict_start_from_noise.",
    )
)



# get_v and predict_start_from_z_and_v


def _v_cases():
    return [(label, dict(x0=c["x0"], noise=c["noise"], t=c["t"], alphas_cumprod=from_betas(c["betas"]).alphas_cumprod)) for label, c in batch_cases()]


register(
    Exercise(
        name="get_v",
        signature="(x0, noise, t, alphas_cumprod) -> v",
        reference=lambda x0, noise, t, alphas_cumprod: get_v(x0, noise, t, from_alphas_cumprod(alphas_cumprod)),
        cases=_v_cases,
        rtol=1e-5,
        mistakes=[
            (lambda x0, noise, t, alphas_cumprod: (1 - at(alphas_cumprod, t)).sqrt() * x0 - at(alphas_cumprod, t).sqrt() * noise, "the sign is flipped: v = sqrt(abar) eps - sqrt(1 - abar) x0."),
            (lambda x0, noise, t, alphas_cumprod: (1 - at(alphas_cumprod, t)).sqrt() * noise - at(alphas_cumprod, t).sqrt() * x0, "the coefficients are swapped: eps gets sqrt(abar_t), x0 gets sqrt(1 - abar_t)."),
            (lambda x0, noise, t, alphas_cumprod: at(alphas_cumprod, t) * noise - (1 - at(alphas_cumprod, t)) * x0, "use the standard deviations sqrt(abar_t) and sqrt(1 - abar_t), not the variances."),
        ],
        hint="Salimans & Ho 2022: v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (the velocity of x_t along the circle (sqrt(abar), sqrt(1-abar))).",
    )
)


register(
    Exercise(
        name="predict_start_from_z_and_v",
        signature="(x_t, t, v, alphas_cumprod) -> x0",
        reference=lambda x_t, t, v, alphas_cumprod: predict_start_from_z_and_v(x_t, t, v, from_alphas_cumprod(alphas_cumprod)),
        cases=z_v_cases,
        rtol=1e-5,
        mistakes=[
            (lambda x_t, t, v, alphas_cumprod: at(alphas_cumprod, t).sqrt() * x_t + (1 - at(alphas_cumprod, t)).sqrt() * v, "sign: x0 = sqrt(abar) x_t MINUS sqrt(1 - abar) v (that plus-sign combination is eps, predict_eps_from_z_and_v)."),
            (lambda x_t, t, v, alphas_cumprod: (1 - at(alphas_cumprod, t)).sqrt() * x_t - at(alphas_cumprod, t).sqrt() * v, "coefficients swapped: x_t gets sqrt(abar_t), v gets sqrt(1 - abar_t)."),
            (lambda x_t, t, v, alphas_cumprod: (x_t - (1 - at(alphas_cumprod, t)).sqrt() * v) / at(alphas_cumprod, t).sqrt(), "that treats v like eps; with v no division is needed: x0 = sqrt(abar) x_t - sqrt(1 - abar) v."),
            (lambda x_t, t, v, alphas_cumprod: (at(alphas_cumprod, t).sqrt() * x_t - (1 - at(alphas_cumprod, t)).sqrt() * v).clamp(-1, 1), "do not clamp: with an imperfect v estimate x0_hat leaves [-1, 1]; clipping is a separate, optional step (clip_denoised / clip_sample), never part of the conversion."),
        ],
        hint="substitute x_t = sqrt(abar) x0 + sqrt(1-abar) eps and v = sqrt(abar) eps - sqrt(1-abar) x0 into sqrt(abar) x_t - sqrt(1-abar) v and use abar + (1 - abar) = 1.",
    )
)

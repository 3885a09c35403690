r"""Exercises of ``notebooks/exercises/07_derive_and_predict.ipynb``: derive a number on paper, or predict a
measurement before running it.

Every expected value is computed here *independently* of the formula the student is meant to derive:
variances by composing the Gaussian steps (and conditioning by a Schur complement), crossings by
bisection, the number of model evaluations by counting the calls a real sampler makes, the order of
convergence and the effect of guidance by measuring them.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..mixture import GaussianMixture, ode_reference
from ..schedules import NoiseSchedule
from .beyond import Task, Verdict, WrongKindOfAnswer, as_number, number_task, register

F64 = torch.float64

#: The givens of the exercises, as the notebook states them.
BETA_1, BETA_2 = 0.1, 0.2
SIGMA = 2.0
HEUN_STEPS = 25
GUIDED_DIGIT, LOW_SCALE, HIGH_SCALE = 3, 1.0, 5.0


# --------------------------------------------------------------------------------------------
# the forward chain, composed step by step


def _noise_coefficients(betas) -> list[list[float]]:
    """For x_1, ..., x_n of the chain x_s = sqrt(1 - beta_s) x_{s-1} + sqrt(beta_s) e_s: each x_s's coefficients on (e_1, ..., e_n)."""
    rows, current = [], []
    for s, beta in enumerate(betas):
        current = [c * math.sqrt(1 - beta) for c in current] + [math.sqrt(beta)]
        rows.append(current + [0.0] * (len(betas) - s - 1))
    return rows


def _two_step_variance() -> float:
    """Var(x_2 | x_0): the squared noise coefficients of x_2, summed (independent noises add variances)."""
    return sum(c * c for c in _noise_coefficients([BETA_1, BETA_2])[1])


def _posterior_variance() -> float:
    """Var(x_1 | x_2, x_0) by conditioning the joint Gaussian of (x_1, x_2) (a Schur complement)."""
    n1, n2 = (torch.tensor(r, dtype=F64) for r in _noise_coefficients([BETA_1, BETA_2]))
    return float(n1 @ n1 - (n1 @ n2) ** 2 / (n2 @ n2))


register(number_task(
    "two_step_variance",
    _two_step_variance,
    mistakes=[
        (lambda: BETA_1 + BETA_2, "the second step shrinks everything in x_1 by sqrt(1 - beta_2), the first step's noise included: its variance becomes (1 - beta_2) beta_1."),
        (lambda: (1 - BETA_1) * (1 - BETA_2), "(1 - beta_1)(1 - beta_2) is abar_2, the variance left to the SIGNAL's coefficient squared; the noise has the rest."),
        (lambda: (math.sqrt(BETA_1) + math.sqrt(BETA_2)) ** 2, "independent noises add their VARIANCES, not their standard deviations."),
        (lambda: math.sqrt(_two_step_variance()), "that is the standard deviation; the question asks for the variance."),
        (lambda: BETA_1 * BETA_2, "variances of independent noises add; they do not multiply."),
    ],
    hint="write x_1 = sqrt(1-beta_1) x_0 + sqrt(beta_1) e_1, substitute it into x_2 = sqrt(1-beta_2) x_1 + sqrt(beta_2) e_2, "
         "and add the variances of the two independent noise terms.",
    explanation="Var = (1 - beta_2) beta_1 + beta_2 = 1 - (1 - beta_1)(1 - beta_2) = 1 - abar_2 (DDPM Eq. 4).",
))

register(number_task(
    "posterior_variance",
    _posterior_variance,
    mistakes=[
        (lambda: BETA_2, "beta_2 is DDPM's other variance (sigma_t^2 = beta_t, 'fixed_large'); the posterior q(x_1 | x_2, x_0) is narrower: beta_tilde."),
        (lambda: _two_step_variance() / BETA_1 * BETA_2, "the ratio is upside down: beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t, smaller than beta_t."),
        (lambda: BETA_1, "beta_1 is the variance of q(x_1 | x_0); knowing x_2 as well narrows it down."),
        (lambda: math.sqrt(_posterior_variance()), "that is the standard deviation; the question asks for the variance."),
    ],
    hint="(x_1, x_2) given x_0 is jointly Gaussian: Var(x_1) = beta_1, Cov(x_1, x_2) = sqrt(1-beta_2) beta_1, Var(x_2) = 1 - abar_2; "
         "conditioning on x_2 leaves Var(x_1) - Cov^2 / Var(x_2) (or use DDPM Eq. 7).",
    explanation="beta_tilde_2 = (1 - abar_1) / (1 - abar_2) * beta_2 (DDPM Eq. 7): the posterior is narrower than beta_2.",
))


# --------------------------------------------------------------------------------------------
# the SNR at which x0_hat's error equals eps's error; abar at a given sigma


def _bisect(f, lo: float, hi: float, iterations: int = 200) -> float:
    """The root of an increasing or decreasing ``f`` on [lo, hi] by bisection."""
    f_lo = f(lo)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if (f(mid) > 0) == (f_lo > 0):
            lo, f_lo = mid, f(mid)
        else:
            hi = mid
    return (lo + hi) / 2


def _x0_error_per_eps_error(a: float) -> float:
    """Measured: how far x0_hat = (x_t - sqrt(1-a) eps) / sqrt(a) moves when eps moves by a unit."""
    x_t, eps, delta = 0.3, -0.7, 1e-3
    x0_hat = lambda e: (x_t - math.sqrt(1 - a) * e) / math.sqrt(a)  # noqa: E731
    return abs(x0_hat(eps + delta) - x0_hat(eps)) / delta


def _snr_where_errors_equal() -> float:
    a = _bisect(lambda a: _x0_error_per_eps_error(a) - 1, 1e-9, 1 - 1e-9)
    return a / (1 - a)


register(number_task(
    "snr_where_errors_equal",
    _snr_where_errors_equal,
    mistakes=[
        (lambda: 0.5, "0.5 is abar at that point; the SNR is abar / (1 - abar)."),
        (lambda: 0.0, "at SNR = 0 (pure noise) the x0 error is infinitely larger than the eps error: x0_hat divides by sqrt(abar)."),
    ],
    hint="x0_hat = (x_t - sqrt(1-abar) eps_hat) / sqrt(abar): an error d in eps_hat moves x0_hat by sqrt((1-abar)/abar) d = d / sqrt(SNR).",
    explanation="the x0 error is the eps error times sqrt((1-abar)/abar) = 1/sqrt(SNR): larger at high noise (SNR < 1), "
                "smaller at low noise. Predicting eps is hard where there is almost no noise, predicting x0 where there is much.",
))


def _alpha_bar_at_sigma() -> float:
    return _bisect(lambda a: math.sqrt((1 - a) / a) - SIGMA, 1e-12, 1 - 1e-12)


register(number_task(
    "alpha_bar_at_sigma",
    _alpha_bar_at_sigma,
    mistakes=[
        (lambda: 1 / (1 + SIGMA), "sigma is a standard deviation: sigma^2 = (1 - abar) / abar, so abar = 1 / (1 + sigma^2)."),
        (lambda: 1 / SIGMA**2, "1/sigma^2 is the SNR abar / (1 - abar), not abar."),
        (lambda: SIGMA**2 / (1 + SIGMA**2), "that is 1 - abar, the variance of the noise in x_t."),
    ],
    hint="x_bar = x_t / sqrt(abar) = x0 + sigma eps with sigma = sqrt((1 - abar) / abar); solve for abar.",
    explanation="abar = 1 / (1 + sigma^2): x_t = x_bar / sqrt(1 + sigma^2) (k-diffusion's c_in).",
))


# --------------------------------------------------------------------------------------------
# Heun's model evaluations with guidance, counted on a real run


@lru_cache(maxsize=None)
def count_heun_evaluations(steps: int = HEUN_STEPS) -> float:
    """Noise predictions per image of the library's Heun with classifier-free guidance (conditional and unconditional
    counted separately), counted by wrapping the model: the rows it is given, divided by the batch size."""
    from ..guidance import guided_eps_model
    from ..sampling import sample

    schedule = NoiseSchedule.stable_diffusion()
    exact = GaussianMixture.example().eps_model(schedule)
    rows = [0]

    def model(x, t, c):
        rows[0] += x.shape[0]
        return exact(x, t)

    batch = 3
    labels = torch.zeros(batch)
    x_T = torch.randn(batch, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    sample(guided_eps_model(model, labels, labels + 1, 7.5), x_T, schedule, sampler="heun", steps=steps)
    return rows[0] / batch


register(number_task(
    "heun_guided_evaluations",
    count_heun_evaluations,
    mistakes=[
        (lambda: 4 * HEUN_STEPS, "the last step goes to sigma = 0, where the slope (x - D)/sigma is undefined: Heun's last step is a single Euler evaluation."),
        (lambda: 2 * HEUN_STEPS - 1, "that counts Heun's evaluations; classifier-free guidance evaluates each one twice (conditional and unconditional)."),
        (lambda: 2 * HEUN_STEPS, "that counts one evaluation per step, doubled by guidance: Heun evaluates twice per step (at sigma_i and at the Euler guess at sigma_{i+1})."),
        (lambda: HEUN_STEPS, "Heun evaluates the model twice per step (at sigma_i and at the Euler guess at sigma_{i+1}), and guidance doubles each."),
    ],
    hint="count per step: Heun evaluates at sigma_i and at sigma_{i+1} (except on the last step to sigma = 0), and guidance runs the "
         "network on the conditional and the unconditional input each time.",
    explanation="2 (2N - 1): N - 1 Heun steps of 2 evaluations, one Euler step to sigma = 0, each evaluation doubled by guidance "
                "(counted on the library's Heun with a counting model).",
))


# --------------------------------------------------------------------------------------------
# predict: DDIM's order of convergence, measured on the exact mixture


#: A mixture of wide components: its probability-flow ODE is smooth down to sigma = 0, so a sampler shows its order.
WIDE_MIXTURE = GaussianMixture(
    weights=torch.tensor([0.5, 0.3, 0.2], dtype=F64),
    means=torch.tensor([[-1.0, -0.5], [1.0, -0.8], [0.2, 1.2]], dtype=F64),
    stds=torch.tensor([0.4, 0.5, 0.3], dtype=F64),
)
ORDER_STEPS = (20, 40)


@lru_cache(maxsize=1)
def measured_ddim_order() -> tuple[float, tuple[float, float]]:
    """(p, (error at N, error at 2N)) of the library's DDIM (eta = 0, CompVis grid) against the exact ODE on
    :data:`WIDE_MIXTURE`, from ``x_T`` at the grid's first level to its last (abar_0)."""
    from ..sampling import SamplerSettings, sample

    schedule = NoiseSchedule.stable_diffusion()
    eps_model = WIDE_MIXTURE.eps_model(schedule)
    x_T = torch.randn(128, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    errors = []
    for steps in ORDER_STEPS:
        grid = SamplerSettings("ddim", steps).grid(schedule)
        exact = ode_reference(WIDE_MIXTURE, x_T, float(grid.alphas_cumprod[0]), float(grid.alphas_cumprod[-1]))
        errors.append(float((sample(eps_model, x_T, grid, sampler="ddim") - exact).pow(2).sum(1).mean().sqrt()))
    return math.log2(errors[0] / errors[1]), (errors[0], errors[1])


def _judge_order(answer) -> Verdict:
    got = as_number(answer)
    p, (e1, e2) = measured_ddim_order()
    lines = [f"measured: RMS error against the exact ODE {e1:.4g} at {ORDER_STEPS[0]} steps, {e2:.4g} at {ORDER_STEPS[1]}; "
             f"p = log2({e1:.4g} / {e2:.4g}) = {p:.2f}. You predicted {got:.3g}."]
    if abs(got - p) <= 0.25:
        return Verdict(True, lines + ["DDIM is Euler's method for dx_bar/dsigma = eps: local error O(h^2) per step, N = O(1/h) steps, global error O(h)."])
    if abs(got - 2) <= 0.25:
        return Verdict(False, lines, "O(h^2) is the error of ONE step; the N = O(1/h) steps add up to a global error O(h).")
    if abs(got - 0.5) <= 0.2:
        return Verdict(False, lines, "1/2 is the strong order of Euler-Maruyama for an SDE (DDPM, eta > 0); DDIM with eta = 0 solves an ODE.")
    if got >= 3:
        return Verdict(False, lines, "high orders belong to multistep methods such as PLMS (up to 4); DDIM uses one model evaluation per step and no history.")
    return Verdict(False, lines, "DDIM is the Euler method in sigma (DDIM Eq. 14): what is Euler's global order?")


register(Task("ddim_order", "a number (the order p)", _judge_order, "the error falls as (1/N)^p: what is p for Euler's method?", "prediction"))


# --------------------------------------------------------------------------------------------
# predict: what guidance does to the judge's confidence and to the diversity of one digit


DIRECTIONS = ("up", "down", "same")
#: A relative change smaller than this counts as "same".
SAME_WITHIN = 0.02


@lru_cache(maxsize=1)
def measured_guidance() -> dict[str, tuple[float, float]]:
    """On the shipped digits model, 20 samples of one digit (DDIM, 10 steps, one seed) at guidance scale 1 and 5:
    the judge's mean top-class probability and the diversity (per-pixel std across the samples, averaged)."""
    from ..toy import load_pretrained
    from ..toy.demo import draw_digits
    from ..toy.judge import mean_top_class_probability

    model, schedule = load_pretrained()
    labels = torch.full((20,), GUIDED_DIGIT)
    result = {"confidence": [], "diversity": []}
    for scale in (LOW_SCALE, HIGH_SCALE):
        images = draw_digits(model, schedule, labels, "ddim", 10, guidance_scale=scale, seed=0)
        result["confidence"].append(mean_top_class_probability(images))
        result["diversity"].append(float(images.std(0).mean()))
    return {k: (v[0], v[1]) for k, v in result.items()}


def _direction(low: float, high: float) -> str:
    return "same" if abs(high - low) <= SAME_WITHIN * abs(low) else ("up" if high > low else "down")


def _judge_guidance(answer) -> Verdict:
    if not isinstance(answer, dict) or set(answer) != {"confidence", "diversity"}:
        raise WrongKindOfAnswer('expected a dict {"confidence": ..., "diversity": ...} with "up", "down" or "same" for each')
    for key, word in answer.items():
        if word not in DIRECTIONS:
            raise WrongKindOfAnswer(f'{key}: expected one of {DIRECTIONS}, got {word!r}')
    measured = measured_guidance()
    lines, wrong = [], []
    for key in ("confidence", "diversity"):
        low, high = measured[key]
        truth = _direction(low, high)
        lines.append(f"{key}: {low:.3f} at scale {LOW_SCALE:g}, {high:.3f} at scale {HIGH_SCALE:g} ({truth}); you predicted {answer[key]}.")
        if answer[key] != truth:
            wrong.append(key)
    if not wrong:
        return Verdict(True, lines + ["guidance extrapolates away from the unconditional prediction: every sample is pushed towards "
                                      "what is most typical of its class, so the judge is surer and the samples look more alike."])
    hint = ("guidance moves every sample in the direction e_cond - e_uncond, towards what the class has that other digits lack: "
            "does that make the samples of one digit more alike or less?" if "diversity" in wrong else
            "the judge's confidence is how sure it is of SOME digit: does pushing towards the class make the samples more or less typical?")
    return Verdict(False, lines, hint)


register(Task("guidance_effect", 'a dict {"confidence": "up"/"down"/"same", "diversity": ...}', _judge_guidance,
              "guidance scale s > 1 extrapolates: e_uncond + s (e_cond - e_uncond).", "prediction"))

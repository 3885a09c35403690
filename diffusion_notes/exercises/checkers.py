r"""The exercise checkers: ``check_<name>(student_function) -> bool``.

Every checker follows the same recipe (:func:`_check`): build a few fixed float64 cases, compute
the expected answer with the library (or a closed form), call the student's function, and compare.
On a mismatch it prints the case, the inputs, expected vs got, and then tries the *typical mistakes*
listed for the exercise: when the student's output equals one of them, the matching hint is printed
(e.g. "you used the variance where the standard deviation belongs"). Nothing is raised; a stub that
raises ``NotImplementedError`` is reported as "not implemented yet".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import torch

from ..forward import (get_v, predict_eps_from_z_and_v, predict_start_from_noise, predict_start_from_z_and_v,
                       q_posterior_mean_variance, q_sample)
from ..guidance import classifier_free_guidance
from ..losses import p_losses
from ..mixture import GaussianMixture
from ..models.attention import CrossAttention
from ..samplers import ADAMS_BASHFORTH, adams_bashforth, ddim_sigma, ddim_step, ddpm_step, make_timesteps, plms_step
from ..schedules import NoiseSchedule, make_beta_schedule

__all__ = ["EXERCISES"] + [
    f"check_{name}"
    for name in (
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "snr",
        "q_sample",
        "posterior_mean_variance",
        "predict_start_from_noise",
        "get_v",
        "predict_start_from_z_and_v",
        "l_simple",
        "ddim_sigma",
        "ddim_step",
        "ddim_timesteps",
        "adams_bashforth_coefficients",
        "pseudo_improved_euler",
        "classifier_free_guidance",
        "ddpm_ancestral_step",
        "plms_step_with_history",
        "training_step",
        "cross_attention",
        "x0_and_eps_from_v",
        "to_sigma_view",
        "euler_step_in_sigma",
        "ancestral_sigmas",
        "karras_sigmas",
    )
]

F64 = torch.float64


@dataclass
class Exercise:
    """One exercise: the signature the student implements, its cases, reference and known mistakes."""

    name: str
    signature: str
    reference: Callable
    cases: Callable[[], list[tuple[str, dict]]]
    mistakes: list[tuple[Callable, str]] = field(default_factory=list)
    hint: str = ""
    broadcast_ok: bool = False  # accept outputs that broadcast to the expected shape (e.g. a (B,1,1,1) variance)
    rtol: float = 1e-6
    atol: float = 1e-9


EXERCISES: dict[str, Exercise] = {}


# --------------------------------------------------------------------------------------------
# comparison and reporting


def _as_tuple(value):
    return tuple(value) if isinstance(value, (tuple, list)) and not _is_number_list(value) else (value,)


def _is_number_list(value) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(v, (int, float, Fraction)) for v in value)


def _to_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(F64)
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        if len({tuple(v.shape) for v in value}) == 1:
            return torch.stack([v.detach().to(F64) for v in value])  # a list of tensors, e.g. a sampler's history
    if _is_number_list(value):
        return torch.tensor([float(v) for v in value], dtype=F64)
    return torch.as_tensor(value, dtype=F64)


def _close(got, expected, exercise: Exercise, where: list | None = None) -> tuple[bool, str]:
    """(equal?, reason) for outputs that may be tensors, numbers or tuples of them. When ``where`` is a list,
    a mismatch of values appends ``(output number, index of the largest difference, expected, got)`` to it."""
    got_t, exp_t = _as_tuple(got), _as_tuple(expected)
    if len(got_t) != len(exp_t):
        return False, f"expected {len(exp_t)} output(s), got {len(got_t)}"
    for k, (g, e) in enumerate(zip(got_t, exp_t)):
        try:
            g, e = _to_tensor(g), _to_tensor(e)
        except (TypeError, ValueError, RuntimeError) as err:
            return False, f"output {k} is not a number or tensor ({type(g).__name__}: {err})"
        if g.shape != e.shape:
            try:
                broadcast = torch.broadcast_shapes(g.shape, e.shape) == e.shape
            except RuntimeError:
                broadcast = False
            if not (exercise.broadcast_ok and broadcast):
                return False, f"output {k} has shape {tuple(g.shape)}, expected {tuple(e.shape)}"
            g = g.expand(e.shape)
        if not torch.isfinite(g).all() and torch.isfinite(e).all():
            return False, f"output {k} contains NaN or inf"
        if not torch.allclose(g, e, rtol=exercise.rtol, atol=exercise.atol):
            difference = (g - e).abs().nan_to_num(nan=float("inf"))
            flat = int(difference.flatten().argmax()) if difference.dim() else 0
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), difference.shape)) if difference.dim() else ()
            if where is not None:
                where.append((k, index, float(e.flatten()[flat]) if e.dim() else float(e), float(g.flatten()[flat]) if g.dim() else float(g)))
            return False, f"output {k}: max |got - expected| = {float(difference.max()):.3g}"
    return True, ""


def _where(detail, kwargs) -> str:
    """Where the largest difference is: the element's index, and for batched inputs its batch element and t."""
    k, index, expected, got = detail
    text = f"  largest difference in output {k}"
    if index:
        text += f" at index {index}"
        t = kwargs.get("t")
        if isinstance(t, torch.Tensor) and t.dim() == 1 and len(index) > 1 and index[0] < len(t):
            text += f" (batch element {index[0]}, t = {int(t[index[0]])})"
    return text + f": expected {expected:.6g}, got {got:.6g}"


def _describe(value, limit: int = 4) -> str:
    if isinstance(value, torch.Tensor):
        flat = value.detach().flatten()
        body = ", ".join(f"{float(v):.6g}" for v in flat[:limit])
        more = ", ..." if flat.numel() > limit else ""
        if value.dim() == 0:
            return f"{float(value):.6g}"
        return f"tensor(shape={tuple(value.shape)}, dtype={str(value.dtype).replace('torch.', '')}, [{body}{more}])"
    if isinstance(value, (tuple, list)):
        if _is_number_list(value):
            return "[" + ", ".join(str(v) for v in value) + "]"
        return "(" + ", ".join(_describe(v, limit) for v in value) + ")"
    if callable(value):
        return getattr(value, "__name__", "a function")
    return repr(value)


def _call(fn, kwargs):
    # clone tensor inputs so a student function that modifies them in place cannot corrupt the next case
    def copy(v):
        if isinstance(v, torch.Tensor):
            return v.clone()
        return [copy(e) for e in v] if isinstance(v, list) else v

    return fn(**{k: copy(v) for k, v in kwargs.items()})


def _check(exercise: Exercise, student: Callable) -> bool:
    name = f"{exercise.name}{exercise.signature}"
    cases = exercise.cases()
    for i, (label, kwargs) in enumerate(cases, 1):
        expected = _call(exercise.reference, kwargs)
        try:
            got = _call(student, kwargs)
        except NotImplementedError:
            print(f"{exercise.name}: not implemented yet (the function still raises NotImplementedError).")
            return False
        except Exception as err:  # noqa: BLE001 - report any error as feedback, never raise
            print(f"{exercise.name}: case {i}/{len(cases)} ({label}) raised {type(err).__name__}: {err}")
            _print_inputs(kwargs)
            if exercise.hint:
                print(f"  hint: {exercise.hint}")
            return False
        where = []
        ok, reason = _close(got, expected, exercise, where)
        if ok:
            continue
        print(f"{exercise.name}: case {i}/{len(cases)} ({label}) is wrong: {reason}")
        _print_inputs(kwargs)
        print(f"  expected: {_describe(expected)}")
        print(f"  got     : {_describe(got)}")
        if where:
            print(_where(where[0], kwargs))
        for mistake, message in exercise.mistakes:
            try:
                matches = _close(got, _call(mistake, kwargs), exercise)[0]
            except Exception:  # noqa: BLE001
                matches = False
            if matches:
                print(f"  hint: {message}")
                break
        else:
            if exercise.hint:
                print(f"  hint: {exercise.hint}")
        return False
    print(f"{name}: all {len(cases)} cases correct.")
    return True


def _print_inputs(kwargs):
    print("  inputs:")
    for key, value in kwargs.items():
        print(f"    {key} = {_describe(value)}")


def _register(exercise: Exercise) -> Callable[[Callable], bool]:
    EXERCISES[exercise.name] = exercise

    def check(student_function: Callable) -> bool:
        return _check(exercise, student_function)

    check.__name__ = f"check_{exercise.name}"
    check.__qualname__ = check.__name__
    check.__doc__ = (
        f"Check ``{exercise.name}{exercise.signature}`` on {len(exercise.cases())} fixed cases; "
        "prints feedback and returns True/False."
    )
    return check


# --------------------------------------------------------------------------------------------
# fixed cases


def _schedules() -> list[tuple[str, torch.Tensor]]:
    return [
        ("DDPM linear, T=1000", make_beta_schedule("linear", 1000)),
        ("Stable Diffusion scaled_linear, T=1000", make_beta_schedule("scaled_linear", 1000, linear_start=0.00085, linear_end=0.012)),
        ("cosine, T=50", make_beta_schedule("cosine", 50)),
    ]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch_cases(extra=None) -> list[tuple[str, dict]]:
    """Images (B, C, H, W) with one timestep per batch element, including t = 0 and t = T-1."""
    cases = []
    for k, (label, betas) in enumerate(_schedules()):
        T = betas.shape[0]
        g = _gen(k)
        x0 = torch.rand(4, 1, 3, 3, generator=g, dtype=F64) * 2 - 1
        noise = torch.randn(4, 1, 3, 3, generator=g, dtype=F64)
        t = torch.tensor([0, 1, T // 2, T - 1])
        cases.append((label + ", t = " + str(t.tolist()), dict(x0=x0, noise=noise, t=t, betas=betas)))
    return cases


def _schedule(betas) -> NoiseSchedule:
    return NoiseSchedule.from_betas(betas)


def _from_alphas_cumprod(alphas_cumprod) -> NoiseSchedule:
    """The library's schedule for exercises whose input is alphas_cumprod (betas = 1 - abar_t / abar_{t-1})."""
    prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    return NoiseSchedule.from_betas(1 - alphas_cumprod / prev)


# --------------------------------------------------------------------------------------------
# 1. alphas_cumprod


check_alphas_cumprod = _register(
    Exercise(
        name="alphas_cumprod",
        signature="(betas) -> alphas_cumprod",
        reference=lambda betas: _schedule(betas).alphas_cumprod,
        cases=lambda: [(label, dict(betas=b)) for label, b in _schedules()],
        mistakes=[
            (lambda betas: torch.cumprod(betas, 0), "you multiplied the betas; alpha_bar_t is the product of alpha_s = 1 - beta_s."),
            (lambda betas: 1 - torch.cumsum(betas, 0), "1 - sum(beta) is only the first-order approximation of prod(1 - beta); use torch.cumprod."),
            (lambda betas: torch.cat([betas.new_ones(1), torch.cumprod(1 - betas, 0)[:-1]]), "that is alphas_cumprod_prev (shifted by one); alpha_bar_t includes step t itself."),
            (lambda betas: torch.prod(1 - betas).expand_as(betas), "you need the cumulative product (one value per t), not the total product."),
        ],
        hint="alpha_bar_t = prod_{s <= t} (1 - beta_s), a running product: torch.cumprod(1 - betas, dim=0).",
    )
)

# 2. alphas_cumprod_prev

check_alphas_cumprod_prev = _register(
    Exercise(
        name="alphas_cumprod_prev",
        signature="(alphas_cumprod) -> alphas_cumprod_prev",
        reference=lambda alphas_cumprod: torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]]),
        cases=lambda: [(label, dict(alphas_cumprod=_schedule(b).alphas_cumprod)) for label, b in _schedules()],
        mistakes=[
            (lambda alphas_cumprod: torch.cat([alphas_cumprod[1:], alphas_cumprod[-1:]]), "shifted the wrong way: prev[t] must be alphas_cumprod[t-1] (the LESS noisy step), so the shift goes right and 1 enters at t = 0."),
            (lambda alphas_cumprod: torch.cat([alphas_cumprod[1:], alphas_cumprod.new_ones(1)]), "shifted the wrong way: prev[t] = alphas_cumprod[t-1], with prev[0] = 1 at the front, not at the end."),
            (lambda alphas_cumprod: torch.cat([alphas_cumprod.new_zeros(1), alphas_cumprod[:-1]]), "the first entry is alpha_bar_0 = 1 (no noise before the first step), not 0."),
            (lambda alphas_cumprod: torch.cat([alphas_cumprod[:1], alphas_cumprod[:-1]]), "prev[0] is 1 (DDPM's alpha_bar_0 = 1), not alphas_cumprod[0]; (alphas_cumprod[0] as 'previous alpha' is a DDIM sampler convention, not this buffer)."),
        ],
        hint="prepend a 1 and drop the last element: torch.cat([ones(1), alphas_cumprod[:-1]]).",
    )
)

# 3. snr

check_snr = _register(
    Exercise(
        name="snr",
        signature="(alphas_cumprod) -> snr",
        reference=lambda alphas_cumprod: alphas_cumprod / (1 - alphas_cumprod),
        cases=lambda: [(label, dict(alphas_cumprod=_schedule(b).alphas_cumprod)) for label, b in _schedules()],
        mistakes=[
            (lambda alphas_cumprod: (1 - alphas_cumprod) / alphas_cumprod, "upside down: that is the noise-to-signal ratio (sigma^2); SNR = signal variance / noise variance."),
            (lambda alphas_cumprod: (alphas_cumprod / (1 - alphas_cumprod)).sqrt(), "missing the square: SNR is a ratio of VARIANCES, alpha_bar / (1 - alpha_bar), not of standard deviations."),
            (lambda alphas_cumprod: torch.log(alphas_cumprod / (1 - alphas_cumprod)), "that is log SNR; return the SNR itself."),
        ],
        hint="x_t = sqrt(abar) x0 + sqrt(1 - abar) eps: the signal variance is abar, the noise variance 1 - abar.",
    )
)

# 4. q_sample


def _q_sample_cases():
    return [(label, dict(x0=c["x0"], t=c["t"], noise=c["noise"], alphas_cumprod=_schedule(c["betas"]).alphas_cumprod)) for label, c in _batch_cases()]


def _q_sample_ref(x0, t, noise, alphas_cumprod):
    a = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


check_q_sample = _register(
    Exercise(
        name="q_sample",
        signature="(x0, t, noise, alphas_cumprod) -> x_t",
        reference=lambda x0, t, noise, alphas_cumprod: q_sample(x0, t, noise, _from_alphas_cumprod(alphas_cumprod)),
        cases=_q_sample_cases,
        mistakes=[
            (lambda x0, t, noise, alphas_cumprod: alphas_cumprod[t].reshape(-1, 1, 1, 1) * x0 + (1 - alphas_cumprod[t].reshape(-1, 1, 1, 1)) * noise, "you used the variances abar and 1 - abar as coefficients; the coefficients are the standard deviations sqrt(abar) and sqrt(1 - abar)."),
            (lambda x0, t, noise, alphas_cumprod: alphas_cumprod[t].reshape(-1, 1, 1, 1).sqrt() * x0 + (1 - alphas_cumprod[t].reshape(-1, 1, 1, 1)) * noise, "the noise coefficient is sqrt(1 - abar) (a standard deviation), not 1 - abar."),
            (lambda x0, t, noise, alphas_cumprod: _q_sample_ref(x0, (t - 1).clamp(min=0), noise, alphas_cumprod), "off by one: the buffers are indexed by t itself (0-based), use alphas_cumprod[t]."),
        ],
        hint="DDPM Eq. 4: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, with abar_t = alphas_cumprod[t] reshaped to (B, 1, 1, 1) so it broadcasts over each image.",
    )
)

# 5. posterior mean and variance


def _posterior_ref(x0, x_t, t, betas):
    mean, variance, _ = q_posterior_mean_variance(x0, x_t, t, _schedule(betas))
    return mean, variance


def _posterior_cases():
    cases = []
    for label, c in _batch_cases():
        s = _schedule(c["betas"])
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


check_posterior_mean_variance = _register(
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

# 6. predict_start_from_noise


def _x_t_cases():
    cases = []
    for label, c in _batch_cases():
        s = _schedule(c["betas"])
        x_t = q_sample(c["x0"], c["t"], c["noise"], s)
        cases.append((label, dict(x_t=x_t, t=c["t"], noise=c["noise"], alphas_cumprod=s.alphas_cumprod)))
    # a network's estimate is never the exact noise: then x0_hat leaves [-1, 1] (and a clamp would change it)
    for label, c in _batch_cases()[:2]:
        s = _schedule(c["betas"])
        x_t = q_sample(c["x0"], c["t"], c["noise"], s)
        estimate = 0.7 * c["noise"] + 0.5 * torch.randn(c["noise"].shape, generator=_gen(50), dtype=F64)
        cases.append((label + ", an imperfect noise estimate (x0_hat outside [-1, 1])", dict(x_t=x_t, t=c["t"], noise=estimate, alphas_cumprod=s.alphas_cumprod)))
    return cases


def _r(alphas_cumprod, t):
    return alphas_cumprod[t].reshape(-1, 1, 1, 1)


check_predict_start_from_noise = _register(
    Exercise(
        name="predict_start_from_noise",
        signature="(x_t, t, noise, alphas_cumprod) -> x0",
        reference=lambda x_t, t, noise, alphas_cumprod: predict_start_from_noise(x_t, t, noise, _from_alphas_cumprod(alphas_cumprod)),
        cases=_x_t_cases,
        mistakes=[
            (lambda x_t, t, noise, alphas_cumprod: x_t - (1 - _r(alphas_cumprod, t)).sqrt() * noise, "you removed the noise but forgot to divide by sqrt(abar_t): x_t carries x0 scaled by sqrt(abar_t)."),
            (lambda x_t, t, noise, alphas_cumprod: (x_t - (1 - _r(alphas_cumprod, t)) * noise) / _r(alphas_cumprod, t).sqrt(), "the noise coefficient is sqrt(1 - abar_t), not 1 - abar_t."),
            (lambda x_t, t, noise, alphas_cumprod: (x_t - (1 - _r(alphas_cumprod, t)).sqrt() * noise) / _r(alphas_cumprod, t), "divide by sqrt(abar_t), not abar_t."),
            (lambda x_t, t, noise, alphas_cumprod: ((x_t - (1 - _r(alphas_cumprod, t)).sqrt() * noise) / _r(alphas_cumprod, t).sqrt()).clamp(-1, 1), "do not clamp: the formula is exact, and with an imperfect noise estimate x0_hat leaves [-1, 1]. Clipping is a separate, optional step (CompVis clip_denoised, diffusers clip_sample), used for pixel-space models only, never for SD's latents."),
        ],
        hint="solve DDPM Eq. 4 for x0: x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps. The checker compares with diffusion_notes.predict_start_from_noise.",
    )
)



# 7. get_v and 8. predict_start_from_z_and_v


def _v_cases():
    return [(label, dict(x0=c["x0"], noise=c["noise"], t=c["t"], alphas_cumprod=_schedule(c["betas"]).alphas_cumprod)) for label, c in _batch_cases()]


check_get_v = _register(
    Exercise(
        name="get_v",
        signature="(x0, noise, t, alphas_cumprod) -> v",
        reference=lambda x0, noise, t, alphas_cumprod: get_v(x0, noise, t, _from_alphas_cumprod(alphas_cumprod)),
        cases=_v_cases,
        rtol=1e-5,
        mistakes=[
            (lambda x0, noise, t, alphas_cumprod: (1 - _r(alphas_cumprod, t)).sqrt() * x0 - _r(alphas_cumprod, t).sqrt() * noise, "the sign is flipped: v = sqrt(abar) eps - sqrt(1 - abar) x0."),
            (lambda x0, noise, t, alphas_cumprod: (1 - _r(alphas_cumprod, t)).sqrt() * noise - _r(alphas_cumprod, t).sqrt() * x0, "the coefficients are swapped: eps gets sqrt(abar_t), x0 gets sqrt(1 - abar_t)."),
            (lambda x0, noise, t, alphas_cumprod: _r(alphas_cumprod, t) * noise - (1 - _r(alphas_cumprod, t)) * x0, "use the standard deviations sqrt(abar_t) and sqrt(1 - abar_t), not the variances."),
        ],
        hint="Salimans & Ho 2022: v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (the velocity of x_t along the circle (sqrt(abar), sqrt(1-abar))).",
    )
)


def _z_v_cases():
    cases = []
    for label, c in _batch_cases():
        s = _schedule(c["betas"])
        x_t = q_sample(c["x0"], c["t"], c["noise"], s)
        v = get_v(c["x0"], c["noise"], c["t"], s)
        cases.append((label, dict(x_t=x_t, t=c["t"], v=v, alphas_cumprod=s.alphas_cumprod)))
    for label, c in _batch_cases()[:2]:  # an imperfect v estimate: x0_hat leaves [-1, 1]
        s = _schedule(c["betas"])
        x_t = q_sample(c["x0"], c["t"], c["noise"], s)
        v = get_v(c["x0"], c["noise"], c["t"], s) + 1.5 * torch.randn(c["x0"].shape, generator=_gen(51), dtype=F64)
        cases.append((label + ", an imperfect v estimate (x0_hat outside [-1, 1])", dict(x_t=x_t, t=c["t"], v=v, alphas_cumprod=s.alphas_cumprod)))
    return cases


check_predict_start_from_z_and_v = _register(
    Exercise(
        name="predict_start_from_z_and_v",
        signature="(x_t, t, v, alphas_cumprod) -> x0",
        reference=lambda x_t, t, v, alphas_cumprod: predict_start_from_z_and_v(x_t, t, v, _from_alphas_cumprod(alphas_cumprod)),
        cases=_z_v_cases,
        rtol=1e-5,
        mistakes=[
            (lambda x_t, t, v, alphas_cumprod: _r(alphas_cumprod, t).sqrt() * x_t + (1 - _r(alphas_cumprod, t)).sqrt() * v, "sign: x0 = sqrt(abar) x_t MINUS sqrt(1 - abar) v (that plus-sign combination is eps, predict_eps_from_z_and_v)."),
            (lambda x_t, t, v, alphas_cumprod: (1 - _r(alphas_cumprod, t)).sqrt() * x_t - _r(alphas_cumprod, t).sqrt() * v, "coefficients swapped: x_t gets sqrt(abar_t), v gets sqrt(1 - abar_t)."),
            (lambda x_t, t, v, alphas_cumprod: (x_t - (1 - _r(alphas_cumprod, t)).sqrt() * v) / _r(alphas_cumprod, t).sqrt(), "that treats v like eps; with v no division is needed: x0 = sqrt(abar) x_t - sqrt(1 - abar) v."),
            (lambda x_t, t, v, alphas_cumprod: (_r(alphas_cumprod, t).sqrt() * x_t - (1 - _r(alphas_cumprod, t)).sqrt() * v).clamp(-1, 1), "do not clamp: with an imperfect v estimate x0_hat leaves [-1, 1]; clipping is a separate, optional step (clip_denoised / clip_sample), never part of the conversion."),
        ],
        hint="substitute x_t = sqrt(abar) x0 + sqrt(1-abar) eps and v = sqrt(abar) eps - sqrt(1-abar) x0 into sqrt(abar) x_t - sqrt(1-abar) v and use abar + (1 - abar) = 1.",
    )
)

# 9. L_simple


def _toy_eps_model(x, t):
    """A fixed stand-in for a network: linear in x, with a dependence on t."""
    return 0.5 * x + 1e-3 * t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) - 0.1


def _l_simple_cases():
    return [(label, dict(eps_model=_toy_eps_model, x0=c["x0"], t=c["t"], noise=c["noise"], alphas_cumprod=_schedule(c["betas"]).alphas_cumprod)) for label, c in _batch_cases()]


def _l_simple_variant(eps_model, x0, t, noise, alphas_cumprod, target="eps", reduce="mean", model_input="x_t"):
    a = _r(alphas_cumprod, t)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    prediction = eps_model(x_t if model_input == "x_t" else x0, t)
    err = (prediction - (noise if target == "eps" else x0)) ** 2
    return err.mean() if reduce == "mean" else err.sum()


check_l_simple = _register(
    Exercise(
        name="l_simple",
        signature="(eps_model, x0, t, noise, alphas_cumprod) -> scalar loss",
        reference=lambda eps_model, x0, t, noise, alphas_cumprod: p_losses(eps_model, x0, t, _from_alphas_cumprod(alphas_cumprod), noise=noise),
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

# 10. ddim_sigma


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


check_ddim_sigma = _register(
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

# 11. ddim_step


def _ddim_step_cases():
    a = NoiseSchedule.stable_diffusion().alphas_cumprod
    cases = []
    for k, (t, t_prev, eta) in enumerate([(981, 961, 0.0), (501, 401, 0.0), (501, 401, 1.0), (21, 1, 0.5)]):
        g = _gen(100 + k)
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


check_ddim_step = _register(
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

# 12. DDIM timesteps (CompVis uniform)

check_ddim_timesteps = _register(
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

# 13. Adams-Bashforth coefficients


def _ab_reference(order):
    if order == 1:
        return [Fraction(1)]
    coefficients, denominator = ADAMS_BASHFORTH[order]
    return [Fraction(c, denominator) for c in coefficients]


check_adams_bashforth_coefficients = _register(
    Exercise(
        name="adams_bashforth_coefficients",
        signature="(order) -> coefficients b_0..b_{order-1}, newest first",
        reference=_ab_reference,
        cases=lambda: [(f"order {k}", dict(order=k)) for k in (1, 2, 3, 4)],
        atol=1e-12,
        rtol=1e-12,
        mistakes=[
            (lambda order: list(reversed(_ab_reference(order))), "the order is reversed: list the coefficient of the NEWEST value (f_n) first."),
            (lambda order: [c * (ADAMS_BASHFORTH.get(order, ((1,), 1))[1]) for c in _ab_reference(order)], "divide by the common denominator: the coefficients sum to 1 (a constant f must be integrated exactly)."),
            (lambda order: [-c for c in _ab_reference(order)], "sign: integrate the interpolating polynomial FORWARD over [0, 1] (s = 0 is the newest node, past nodes at s = -1, -2, ...)."),
        ],
        hint="b_j = integral over s in [0, 1] of the Lagrange basis polynomial l_j(s) through the nodes s = 0, -1, ..., -(order-1). They sum to 1.",
    )
)

# 14. pseudo improved Euler


def _pie_cases():
    schedule = NoiseSchedule.stable_diffusion()
    mixture = GaussianMixture.example()
    model = mixture.eps_model(schedule)

    def eps_fn(x, t):
        return model(x, torch.full((x.shape[0],), int(t)))

    eps_fn.__name__ = "eps_fn (the exact Gaussian-mixture denoiser)"
    a = schedule.alphas_cumprod
    cases = []
    for k, (t, t_next) in enumerate([(981, 961), (501, 401), (101, 1)]):
        x = torch.randn(5, 2, generator=_gen(200 + k), dtype=F64) * float((1 - a[t]).sqrt())
        cases.append((f"t={t} -> {t_next}", dict(eps_fn=eps_fn, x=x, t=t, t_next=t_next, a_t=float(a[t]), a_prev=float(a[t_next]))))
    return cases


def _pie_variant(eps_fn, x, t, t_next, a_t, a_prev, kind):
    e_t = eps_fn(x, t)
    if kind == "euler":
        return ddim_step(x, e_t, a_t, a_prev)[0]
    x_mid, _ = ddim_step(x, e_t, a_t, a_prev)
    if kind == "same_t":
        e_next = eps_fn(x_mid, t)
    else:
        e_next = eps_fn(x_mid, t_next)
    if kind == "only_next":
        return ddim_step(x, e_next, a_t, a_prev)[0]
    if kind == "from_mid":
        return ddim_step(x_mid, (e_t + e_next) / 2, a_t, a_prev)[0]
    return ddim_step(x, (e_t + e_next) / 2, a_t, a_prev)[0]


check_pseudo_improved_euler = _register(
    Exercise(
        name="pseudo_improved_euler",
        signature="(eps_fn, x, t, t_next, a_t, a_prev) -> x_prev",
        reference=lambda eps_fn, x, t, t_next, a_t, a_prev: plms_step(eps_fn, x, t, t_next, a_t, a_prev, old_eps=[])[0],
        cases=_pie_cases,
        mistakes=[
            (lambda **kw: _pie_variant(**kw, kind="euler"), "that is a plain DDIM (Euler) step; improved Euler evaluates the model again at the predicted x_prev and averages the two estimates."),
            (lambda **kw: _pie_variant(**kw, kind="only_next"), "use the AVERAGE (e_t + e_t_next) / 2, not e_t_next alone."),
            (lambda **kw: _pie_variant(**kw, kind="same_t"), "evaluate the second estimate at the NEXT timestep t_next (the noise level of the predicted x_prev), not at t."),
            (lambda **kw: _pie_variant(**kw, kind="from_mid"), "the corrector step starts again from x (x_t), not from the predicted x_prev."),
        ],
        hint="Heun: x_pred = ddim(x, e_t); e_next = eps_fn(x_pred, t_next); x_prev = ddim(x, (e_t + e_next) / 2). ddim(x, e) = sqrt(a_prev) (x - sqrt(1-a_t) e)/sqrt(a_t) + sqrt(1-a_prev) e.",
    )
)

# 15. classifier-free guidance


def _cfg_cases():
    g = _gen(300)
    e_u, e_c = torch.randn(2, 4, 3, 3, generator=g, dtype=F64), torch.randn(2, 4, 3, 3, generator=g, dtype=F64)
    return [(f"scale {s}", dict(e_uncond=e_u, e_cond=e_c, scale=s)) for s in (7.5, 1.0, 0.0, 3.0)]


check_classifier_free_guidance = _register(
    Exercise(
        name="classifier_free_guidance",
        signature="(e_uncond, e_cond, scale) -> e_guided",
        reference=lambda e_uncond, e_cond, scale: classifier_free_guidance(e_uncond, e_cond, scale),
        cases=_cfg_cases,
        mistakes=[
            (lambda e_uncond, e_cond, scale: e_cond + scale * (e_uncond - e_cond), "swapped: start from the UNconditional prediction and move towards the conditional one: e_u + s (e_c - e_u)."),
            (lambda e_uncond, e_cond, scale: e_cond + scale * (e_cond - e_uncond), "that is Ho & Salimans' w form, (1 + w) e_c - w e_u, with w = scale; CompVis/diffusers' scale s equals w + 1: e_u + s (e_c - e_u). Check: scale 1 must give e_cond exactly."),
            (lambda e_uncond, e_cond, scale: scale * e_cond, "scaling e_cond alone is not guidance: the unconditional prediction must enter: e_u + s (e_c - e_u)."),
        ],
        hint="Ho & Salimans 2022 Eq. 6 in CompVis's form: e = e_uncond + scale * (e_cond - e_uncond); scale 0 = unconditional, 1 = conditional.",
    )
)


# --------------------------------------------------------------------------------------------
# second set (notebooks/exercises/04_samplers_training_attention.ipynb, 05_sigma_view.ipynb)

# 16. DDPM ancestral step


def _ddpm_step_cases():
    a = NoiseSchedule.stable_diffusion().alphas_cumprod
    cases = []
    for k, (t, t_prev) in enumerate([(999, 998), (500, 499), (1, 0), (981, 961), (101, 1)]):
        g = _gen(400 + k)
        x, e_t, noise = (torch.randn(3, 2, 4, 4, generator=g, dtype=F64) for _ in range(3))
        label = f"t={t} -> {t_prev}" + (" (consecutive)" if t - t_prev == 1 else " (skipping steps)")
        cases.append((label, dict(x=x, e_t=e_t, a_t=float(a[t]), a_prev=float(a[t_prev]), noise=noise)))
    return cases


def _ddpm_variant(x, e_t, a_t, a_prev, noise, variance="posterior", beta_from="step", std=True):
    beta = 1 - a_t / a_prev if beta_from == "step" else 1 - a_t
    pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
    mean = (a_prev**0.5 * beta / (1 - a_t)) * pred_x0 + ((1 - beta) ** 0.5 * (1 - a_prev) / (1 - a_t)) * x
    var = beta * (1 - a_prev) / (1 - a_t) if variance == "posterior" else beta
    return mean + (var**0.5 if std else var) * noise


check_ddpm_ancestral_step = _register(
    Exercise(
        name="ddpm_ancestral_step",
        signature="(x, e_t, a_t, a_prev, noise) -> x_prev",
        reference=lambda x, e_t, a_t, a_prev, noise: ddpm_step(x, e_t, a_t, a_prev, noise, variance="posterior")[0],
        cases=_ddpm_step_cases,
        mistakes=[
            (lambda **kw: _ddpm_variant(**kw, variance="beta"), "the mean is right but you used sigma^2 = beta (DDPM's other choice, fixed_large); this exercise asks for the posterior variance beta_tilde = (1 - a_prev) / (1 - a_t) * beta."),
            (lambda **kw: _ddpm_variant(**kw, std=False), "the noise is scaled by the standard deviation sqrt(beta_tilde), not by the variance."),
            (lambda **kw: _ddpm_variant(**kw, beta_from="abar"), "the step's beta is 1 - a_t / a_prev (one step from a_prev to a_t), not 1 - a_t; they agree only at the first step."),
            (lambda x, e_t, a_t, a_prev, noise: ddpm_step(x, e_t, a_t, a_prev, None)[0], "you returned the posterior mean: add sigma * noise (DDPM Algorithm 2, line 4)."),
        ],
        hint="x0_hat = (x - sqrt(1-a_t) e_t) / sqrt(a_t); beta = 1 - a_t/a_prev; mean = sqrt(a_prev) beta/(1-a_t) x0_hat + sqrt(1-beta)(1-a_prev)/(1-a_t) x (DDPM Eq. 7); x_prev = mean + sqrt((1-a_prev)/(1-a_t) beta) noise.",
    )
)

# 17. PLMS step with its history


def _plms_history_cases():
    a = NoiseSchedule.stable_diffusion().alphas_cumprod
    cases = []
    for k, n_old in enumerate([1, 2, 3, 4]):
        g = _gen(500 + k)
        x, e_t = torch.randn(2, 3, 4, generator=g, dtype=F64), torch.randn(2, 3, 4, generator=g, dtype=F64)
        old = [torch.randn(2, 3, 4, generator=g, dtype=F64) for _ in range(n_old)]
        t, t_prev = 801 - 100 * k, 701 - 100 * k
        cases.append((f"{n_old} previous e_t in the history, t={t} -> {t_prev}", dict(x=x, e_t=e_t, old_eps=old, a_t=float(a[t]), a_prev=float(a[t_prev]))))
    return cases


def _plms_history_ref(x, e_t, old_eps, a_t, a_prev):
    x_prev, _ = ddim_step(x, adams_bashforth(e_t, old_eps), a_t, a_prev)
    return x_prev, (list(old_eps) + [e_t])[-3:]


def _plms_history_variant(x, e_t, old_eps, a_t, a_prev, kind):
    if kind == "combined_in_history":
        e_prime = adams_bashforth(e_t, old_eps)
        return ddim_step(x, e_prime, a_t, a_prev)[0], (list(old_eps) + [e_prime])[-3:]
    if kind == "reversed":
        e_prime = adams_bashforth(e_t, list(reversed(old_eps)))
    elif kind == "always_fourth":
        padded = ([old_eps[0]] * 3 + list(old_eps))[-3:]
        e_prime = adams_bashforth(e_t, padded)
    else:  # euler
        e_prime = e_t
    return ddim_step(x, e_prime, a_t, a_prev)[0], (list(old_eps) + [e_t])[-3:]


check_plms_step_with_history = _register(
    Exercise(
        name="plms_step_with_history",
        signature="(x, e_t, old_eps, a_t, a_prev) -> (x_prev, new_old_eps)",
        reference=_plms_history_ref,
        cases=_plms_history_cases,
        mistakes=[
            (lambda **kw: _plms_history_variant(**kw, kind="combined_in_history"), "x_prev is right, but the history must keep the RAW e_t, not the combined e_t' (CompVis appends e_t to old_eps)."),
            (lambda **kw: _plms_history_variant(**kw, kind="reversed"), "old_eps is ordered oldest first: the NEWEST previous estimate is old_eps[-1] (it gets -59/24 in the 4th-order rule)."),
            (lambda **kw: _plms_history_variant(**kw, kind="always_fourth"), "the order depends on the history: 1 previous e_t -> (3 e_t - e_-1)/2, 2 -> (23, -16, 5)/12, 3 or more -> (55, -59, 37, -9)/24."),
            (lambda **kw: _plms_history_variant(**kw, kind="euler"), "that is a plain DDIM step with e_t; combine e_t with the history (Adams-Bashforth) first."),
        ],
        hint="PNDM Eq. 12 (CompVis p_sample_plms): e' from e_t and old_eps[-1], old_eps[-2], old_eps[-3] (newest last); x_prev = sqrt(a_prev) (x - sqrt(1-a_t) e')/sqrt(a_t) + sqrt(1-a_prev) e'; new history = (old_eps + [e_t])[-3:].",
    )
)

# 18. one training step


def _linear_eps_model(params, x, t):
    """A three-parameter stand-in for a network: eps = p0 * x + p1 * t/1000 + p2."""
    return params[0] * x + params[1] * t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) / 1000 + params[2]


def _training_cases():
    cases = []
    for label, c in _batch_cases():
        params = torch.tensor([0.3, -0.2, 0.05], dtype=F64)
        cases.append((label, dict(eps_model=_linear_eps_model, params=params, x0=c["x0"], t=c["t"], noise=c["noise"],
                                  alphas_cumprod=_schedule(c["betas"]).alphas_cumprod, lr=0.1)))
    return cases


def _training_variant(eps_model, params, x0, t, noise, alphas_cumprod, lr, target="eps", sign=-1, model_input="x_t"):
    params = params.detach().clone().requires_grad_(True)
    a = _r(alphas_cumprod, t)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    prediction = eps_model(params, x_t if model_input == "x_t" else x0, t)
    loss = ((prediction - (noise if target == "eps" else x0)) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, params)
    return loss.detach(), (params + sign * lr * grad).detach()


def _training_ref(eps_model, params, x0, t, noise, alphas_cumprod, lr):
    params = params.detach().clone().requires_grad_(True)
    loss = p_losses(lambda x, tt: eps_model(params, x, tt), x0, t, _from_alphas_cumprod(alphas_cumprod), noise=noise)
    (grad,) = torch.autograd.grad(loss, params)
    return loss.detach(), (params - lr * grad).detach()


check_training_step = _register(
    Exercise(
        name="training_step",
        signature="(eps_model, params, x0, t, noise, alphas_cumprod, lr) -> (loss, new_params)",
        reference=_training_ref,
        cases=_training_cases,
        mistakes=[
            (lambda **kw: _training_variant(**kw, sign=+1), "the loss is right but you stepped UP the gradient: gradient descent is params - lr * grad."),
            (lambda **kw: _training_variant(**kw, target="x0"), "the regression target is the noise eps (DDPM Eq. 14), not x0."),
            (lambda **kw: _training_variant(**kw, model_input="x0"), "the model must see the noised x_t = sqrt(abar) x0 + sqrt(1-abar) eps, not x0."),
        ],
        hint="DDPM Algorithm 1: x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) noise; loss = mean((eps_model(params, x_t, t) - noise)^2); grad = torch.autograd.grad(loss, params) with params.requires_grad_(); new_params = params - lr * grad.",
    )
)

# 19. cross-attention


def _attention_cases():
    cases = []
    for k, (heads, d_head, n_query, n_context) in enumerate([(1, 8, 5, 3), (2, 4, 6, 7), (4, 2, 4, 77)]):
        g = _gen(600 + k)
        inner, context_dim = heads * d_head, 5
        x = torch.randn(2, n_query, inner, generator=g, dtype=F64)
        context = torch.randn(2, n_context, context_dim, generator=g, dtype=F64)
        W_q = torch.randn(inner, inner, generator=g, dtype=F64) / inner**0.5
        W_k = torch.randn(context_dim, inner, generator=g, dtype=F64) / context_dim**0.5
        W_v = torch.randn(context_dim, inner, generator=g, dtype=F64) / context_dim**0.5
        cases.append((f"{heads} head(s) of {d_head}, {n_query} image tokens, {n_context} prompt tokens",
                      dict(x=x, context=context, W_q=W_q, W_k=W_k, W_v=W_v, heads=heads)))
    return cases


def _attention_ref(x, context, W_q, W_k, W_v, heads):
    """The library's CrossAttention with these projections and an identity output projection."""
    inner = W_q.shape[1]
    layer = CrossAttention(query_dim=x.shape[-1], context_dim=context.shape[-1], heads=heads, dim_head=inner // heads).to(F64)
    with torch.no_grad():
        layer.to_q.weight.copy_(W_q.T)
        layer.to_k.weight.copy_(W_k.T)
        layer.to_v.weight.copy_(W_v.T)
        layer.to_out[0].weight.copy_(torch.eye(inner, dtype=F64))
        layer.to_out[0].bias.zero_()
        return layer(x, context)


def _attention_variant(x, context, W_q, W_k, W_v, heads, scale="d_head", axis=-1, split=True):
    q, k, v = x @ W_q, context @ W_k, context @ W_v
    b, n, inner = q.shape
    h = heads if split else 1
    q, k, v = (m.reshape(b, m.shape[1], h, inner // h).transpose(1, 2) for m in (q, k, v))
    d = inner // heads
    factor = {"d_head": d**0.5, "inner": inner**0.5, "d": d, "none": 1.0}[scale]
    weights = torch.softmax(q @ k.transpose(-1, -2) / factor, dim=axis)
    return (weights @ v).transpose(1, 2).reshape(b, n, inner)


check_cross_attention = _register(
    Exercise(
        name="cross_attention",
        signature="(x, context, W_q, W_k, W_v, heads) -> out",
        reference=_attention_ref,
        cases=_attention_cases,
        mistakes=[
            (lambda **kw: _attention_variant(**kw, scale="inner"), "scale by sqrt(d_head), the width of ONE head (inner / heads), not by sqrt of the full width."),
            (lambda **kw: _attention_variant(**kw, scale="d"), "scale by the square root of d_head, not by d_head itself."),
            (lambda **kw: _attention_variant(**kw, scale="none"), "divide the logits Q K^T by sqrt(d_head) before the softmax."),
            (lambda **kw: _attention_variant(**kw, axis=-2), "softmax over the KEYS (the prompt tokens, last axis of Q K^T): each image token's weights over the prompt sum to 1."),
            (lambda **kw: _attention_variant(**kw, split=False, scale="inner"), "split the channels into `heads` heads of d_head = inner / heads, attend in each separately, and concatenate."),
        ],
        hint="LDM Eq. 3: Q = x W_q, K = context W_k, V = context W_v, each (B, N, heads * d) reshaped to (B, heads, N, d); out = softmax(Q K^T / sqrt(d)) V per head, heads concatenated back to (B, N, heads * d).",
    )
)

# 20. the v parameterisation inverted: x0 and eps from (x_t, v)


def _x0_eps_from_v_ref(x_t, t, v, alphas_cumprod):
    s = _from_alphas_cumprod(alphas_cumprod)
    return predict_start_from_z_and_v(x_t, t, v, s), predict_eps_from_z_and_v(x_t, t, v, s)


def _x0_eps_variant(x_t, t, v, alphas_cumprod, kind):
    a = _r(alphas_cumprod, t)
    x0 = a.sqrt() * x_t - (1 - a).sqrt() * v
    if kind == "eps_sign":
        return x0, a.sqrt() * v - (1 - a).sqrt() * x_t
    if kind == "eps_swapped":
        return x0, (1 - a).sqrt() * v + a.sqrt() * x_t
    return x0, (x_t - a.sqrt() * x0) / (1 - a)  # kind == "variance"


check_x0_and_eps_from_v = _register(
    Exercise(
        name="x0_and_eps_from_v",
        signature="(x_t, t, v, alphas_cumprod) -> (x0, eps)",
        reference=_x0_eps_from_v_ref,
        cases=_z_v_cases,
        rtol=1e-5,
        mistakes=[
            (lambda **kw: _x0_eps_variant(**kw, kind="eps_sign"), "x0 is right; for eps both terms are added: eps = sqrt(abar) v + sqrt(1 - abar) x_t."),
            (lambda **kw: _x0_eps_variant(**kw, kind="eps_swapped"), "x0 is right; in eps the coefficients are swapped: v gets sqrt(abar_t), x_t gets sqrt(1 - abar_t)."),
            (lambda **kw: _x0_eps_variant(**kw, kind="variance"), "x0 is right; solving x_t = sqrt(abar) x0 + sqrt(1-abar) eps for eps divides by sqrt(1 - abar), not 1 - abar (or use eps = sqrt(abar) v + sqrt(1-abar) x_t)."),
        ],
        hint="(x_t, v) is (x0, eps) rotated by the angle phi with cos(phi) = sqrt(abar), sin(phi) = sqrt(1-abar): x_t = cos x0 + sin eps, v = cos eps - sin x0. Rotate back: x0 = cos x_t - sin v, eps = sin x_t + cos v.",
    )
)

# 21. to the sigma view


def _sigma_view_cases():
    return [(label, dict(x_t=q_sample(c["x0"], c["t"], c["noise"], _schedule(c["betas"])), t=c["t"], alphas_cumprod=_schedule(c["betas"]).alphas_cumprod))
            for label, c in _batch_cases()[:2]]


def _sigma_view_ref(x_t, t, alphas_cumprod):
    s = _from_alphas_cumprod(alphas_cumprod)
    return x_t / s.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1), s.sigmas[t]


check_to_sigma_view = _register(
    Exercise(
        name="to_sigma_view",
        signature="(x_t, t, alphas_cumprod) -> (x_bar, sigma)",
        reference=_sigma_view_ref,
        cases=_sigma_view_cases,
        rtol=1e-6,
        mistakes=[
            (lambda x_t, t, alphas_cumprod: (x_t / _r(alphas_cumprod, t).sqrt(), (1 - alphas_cumprod[t]).sqrt()), "x_bar is right; sigma is the noise level of x_bar = x_t / sqrt(abar), so divide the noise std too: sigma = sqrt((1 - abar) / abar)."),
            (lambda x_t, t, alphas_cumprod: (x_t * _r(alphas_cumprod, t).sqrt(), ((1 - alphas_cumprod[t]) / alphas_cumprod[t]).sqrt()), "sigma is right; x_bar = x_t / sqrt(abar) (DIVIDE, so that x_bar = x0 + sigma eps)."),
            (lambda x_t, t, alphas_cumprod: (x_t / _r(alphas_cumprod, t).sqrt(), (1 - alphas_cumprod[t]) / alphas_cumprod[t]), "that is sigma^2; sigma is its square root."),
        ],
        hint="divide DDPM Eq. 4 by sqrt(abar_t): x_t / sqrt(abar) = x0 + sqrt((1 - abar)/abar) eps = x0 + sigma eps (DDIM Eq. 14, Karras et al. 2022). Return sigma with one value per batch element, shape (B,).",
    )
)

# 22. one Euler step in sigma (issue 9)


def _euler_sigma_cases():
    sigmas = NoiseSchedule.stable_diffusion().sigmas
    cases = []
    for k, (t, t_next) in enumerate([(999, 899), (500, 400), (100, 0)]):
        g = _gen(700 + k)
        sigma, sigma_next = float(sigmas[t]), float(sigmas[t_next])
        x_bar = sigma * torch.randn(3, 2, 4, 4, generator=g, dtype=F64)
        eps = torch.randn(3, 2, 4, 4, generator=g, dtype=F64)
        cases.append((f"sigma {sigma:.3g} -> {sigma_next:.3g} (SD's t={t} -> {t_next})", dict(x_bar=x_bar, eps=eps, sigma=sigma, sigma_next=sigma_next)))
    cases.append(("the last step, to sigma = 0", dict(x_bar=cases[-1][1]["x_bar"], eps=cases[-1][1]["eps"], sigma=float(sigmas[0]), sigma_next=0.0)))
    return cases


check_euler_step_in_sigma = _register(
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

# 23. the ancestral split sigma_down, sigma_up (issue 9)


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


check_ancestral_sigmas = _register(
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

# 24. the Karras sigmas (issue 9)


def _karras_ref(n, sigma_min, sigma_max, rho=7.0):
    i = torch.arange(n, dtype=F64)
    return (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def _karras_cases():
    sigmas = NoiseSchedule.stable_diffusion().sigmas
    lo, hi = float(sigmas[0]), float(sigmas[-1])
    return [(f"n={n}, sigma in [{a:.4g}, {b:.4g}], rho={rho}", dict(n=n, sigma_min=a, sigma_max=b, rho=rho))
            for n, a, b, rho in [(10, lo, hi, 7.0), (25, lo, hi, 7.0), (5, 0.002, 80.0, 7.0), (8, 0.1, 10.0, 3.0)]]


check_karras_sigmas = _register(
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

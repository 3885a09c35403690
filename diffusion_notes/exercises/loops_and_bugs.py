r"""Exercises of ``notebooks/exercises/08_loops_and_bugs.ipynb``: whole sampling loops written from scratch, a
training step on a real ``nn.Module`` with an optimizer, and two samplers with a bug to find.

A loop is judged by what it computes, never by comparison with the library's sampler:

* **exactness where the method is exact**: when the data is a single point :math:`\mu`, the ideal
  denoiser is :math:`D(\bar x;\sigma) = \mu` and the probability-flow ODE's solution is a straight line in
  :math:`\bar x` (:math:`\bar x - \mu \propto \sigma`), which Euler's method, hence DDIM with
  :math:`\eta = 0` (DDIM Eq. 14), and Heun's follow *exactly*, on any grid. A correct loop returns
  :math:`\mu` to 1e-8 (:data:`EXACT_ATOL`). Whatever happened before, a correct *last* step lands on
  :math:`\mu`, so these cases test the end of the loop: one that is skipped, ends at :math:`\bar\alpha_0` instead of 1,
  or has a wrong coefficient misses it;
* **the error against the exact answer** on a Gaussian mixture (:func:`~diffusion_notes.mixture.ode_reference`,
  classical Runge-Kutta on a fine grid): below a bound, and for Heun falling at second order.

A wrong answer is compared with the outputs of the typical wrong loops on the same case; when it equals
one of them, the hint names that mistake. (What an exact-answer check cannot see: a different *consistent*
method, e.g. calling the model at the next timestep instead of the current one, also converges to the exact
answer, and on these cases is as accurate as DDIM.)
"""

from __future__ import annotations

import copy
import inspect
import math

import torch

from ..mixture import GaussianMixture, ode_reference
from ..samplers import karras_sigmas
from ..schedules import NoiseSchedule
from .beyond import Task, Verdict, WrongKindOfAnswer, as_number, register
from .derive_and_predict import WIDE_MIXTURE

F64 = torch.float64

#: The data of the exactness cases: a single point (a one-component mixture of width 0).
POINT = GaussianMixture(weights=torch.ones(1, dtype=F64), means=torch.tensor([[0.6, -0.4]], dtype=F64), stds=torch.zeros(1, dtype=F64))


#: How close to the one data point a loop that is exact there must land (max abs difference).
EXACT_ATOL = 1e-8


def _x_T(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).sum(1).mean().sqrt())


def _same(a, b) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and bool(torch.allclose(a.to(F64), b, rtol=1e-7, atol=1e-9, equal_nan=True))


def _tensor_output(got, shape) -> torch.Tensor:
    if not isinstance(got, torch.Tensor):
        raise WrongKindOfAnswer(f"expected your function to return a tensor of shape {tuple(shape)}, got {type(got).__name__}")
    if tuple(got.shape) != tuple(shape):
        raise WrongKindOfAnswer(f"expected your function to return a tensor of shape {tuple(shape)}, got shape {tuple(got.shape)}")
    return got.detach().to(F64)


def _diagnose(got, variants: list[tuple], call) -> str:
    """The hint of the first typical wrong loop whose output on this case equals ``got``."""
    for variant, message in variants:
        try:
            if _same(got, call(variant)):
                return message
        except Exception:  # noqa: BLE001 - a variant that fails on this case is not the one made
            continue
    return ""


# --------------------------------------------------------------------------------------------
# a DDIM loop (eta = 0) from x_T to x_0


SCHEDULE = NoiseSchedule.stable_diffusion()


def _timestep_model(mixture: GaussianMixture):
    """``eps_model(x, t)`` with t an integer timestep of Stable Diffusion's schedule: the mixture's exact eps."""
    exact = mixture.eps_model(SCHEDULE)

    def eps_model(x, t):
        return exact(x, torch.full((x.shape[0],), float(t), dtype=F64))

    return eps_model


def _ddim_cases():
    uniform = list(range(900, -1, -100))
    return [
        ("the data is one point, 10 uniform steps t = 900, 800, ..., 0", POINT, uniform),
        ("the data is one point, 4 'trailing' steps t = 999, 749, 499, 249", POINT, [999, 749, 499, 249]),
        ("a Gaussian mixture, 50 steps t = 980, 960, ..., 0", WIDE_MIXTURE, list(range(980, -1, -20))),
    ]


#: The largest RMS error against the exact ODE a correct DDIM loop may have on the mixture case (DDIM's own
#: discretisation error there is about half of it; the bound leaves room for float32 arithmetic).
DDIM_MIXTURE_BOUND = 0.06


def _ddim_variant(eps_model, x_T, timesteps, alphas_cumprod, kind):
    x = x_T
    for i, t in enumerate(timesteps):
        last = i + 1 == len(timesteps)
        if last and kind == "skip_last":
            break
        a_t = float(alphas_cumprod[t])
        a_prev = 1.0 if last else float(alphas_cumprod[timesteps[i + 1]])
        if kind == "t_minus_one":
            a_prev = float(alphas_cumprod[t - 1]) if t > 0 else 1.0
        if kind == "end_at_alpha_0" and last:
            a_prev = float(alphas_cumprod[0])
        e = eps_model(x, t)
        x0_hat = (x - (1 - a_t) ** 0.5 * e) / a_t**0.5
        direction = (1 - a_t) ** 0.5 if kind == "direction_a_t" else (1 - a_prev) ** 0.5
        x = a_prev**0.5 * x0_hat + direction * e
        if kind == "first_x0_hat":
            return x0_hat
    return x


DDIM_MISTAKES = [
    ("skip_last", "the loop stops at the last visited timestep: take one more step, from it to abar = 1 (where x = x0_hat)."),
    ("end_at_alpha_0", "the last step must go to abar = 1 (x_0 itself), not to abar_0 (CompVis's alphas_cumprod_prev[0] without set_alpha_to_one)."),
    ("t_minus_one", "a_prev belongs to the NEXT VISITED timestep (timesteps[i+1]), not to t - 1: on a grid of S steps they are T/S apart."),
    ("direction_a_t", "the direction term points to x_prev: sqrt(1 - a_prev) e, not sqrt(1 - a_t) e."),
    ("first_x0_hat", "you returned the first x0_hat: walk through every timestep."),
]


def _judge_ddim_loop(student) -> Verdict:
    cases = _ddim_cases()
    for number, (label, mixture, timesteps) in enumerate(cases, 1):
        eps_model, x_T = _timestep_model(mixture), _x_T()
        call = lambda fn: fn(eps_model, x_T.clone(), list(timesteps), SCHEDULE.alphas_cumprod.clone())  # noqa: E731
        got = _tensor_output(call(student), x_T.shape)
        where = f"case {number}/{len(cases)} ({label})"
        if not torch.isfinite(got).all():
            return Verdict(False, [f"{where}: the result contains NaN or inf."])
        if mixture is POINT:
            error = float((got - POINT.means[0]).abs().max())
            if error > EXACT_ATOL:
                i = int((got - POINT.means[0]).abs().amax(1).argmax())
                hint = _diagnose(got, [(lambda *a, k=k: _ddim_variant(*a, kind=k), m) for k, m in DDIM_MISTAKES], call)
                return Verdict(False, [f"{where}: DDIM lands exactly on the one data point {POINT.means[0].tolist()} on any grid; "
                                       f"yours misses it by up to {error:.3g} (sample {i} ends at ({float(got[i, 0]):.4g}, {float(got[i, 1]):.4g}))."], hint)
        else:
            exact = ode_reference(mixture, x_T, float(SCHEDULE.alphas_cumprod[timesteps[0]]), 1.0)
            error = _rms(got, exact)
            if error > DDIM_MIXTURE_BOUND:
                hint = _diagnose(got, [(lambda *a, k=k: _ddim_variant(*a, kind=k), m) for k, m in DDIM_MISTAKES], call)
                return Verdict(False, [f"{where}: RMS error {error:.3g} against the exact probability-flow ODE, more than DDIM's "
                                       f"{DDIM_MIXTURE_BOUND} at 50 steps."], hint)
            mixture_error = error
    return Verdict(True, [f"exact on the one-point data on both grids; RMS error {mixture_error:.3g} against the exact ODE on the mixture (50 steps)."])


register(Task("ddim_sample", "a function ddim_sample(eps_model, x_T, timesteps, alphas_cumprod) -> x_0", _judge_ddim_loop,
              "for each visited t (a_t = alphas_cumprod[t]; a_prev = alphas_cumprod[next visited t], or 1 after the last): "
              "e = eps_model(x, t); x0_hat = (x - sqrt(1-a_t) e) / sqrt(a_t); x = sqrt(a_prev) x0_hat + sqrt(1-a_prev) e.", "function"))


# --------------------------------------------------------------------------------------------
# a Heun loop in sigma (Karras et al. 2022 Alg. 1)


def _denoiser(mixture: GaussianMixture):
    """``denoiser(x_bar, sigma)``: the mixture's exact D = x_bar - sigma eps*(x_bar, sigma)."""
    return lambda x_bar, sigma: x_bar - float(sigma) * mixture.eps_at_sigma(x_bar, float(sigma))


SIGMA_MAX, SIGMA_MIN = float(SCHEDULE.sigmas[-1]), float(SCHEDULE.sigmas[0])
HEUN_STEPS = (10, 20)


def _karras(n: int, to_zero: bool) -> list[float]:
    sigmas = [float(s) for s in karras_sigmas(SIGMA_MIN, SIGMA_MAX, n + (0 if to_zero else 1))]
    return sigmas + [0.0] if to_zero else sigmas


def _heun_variant(denoiser, x_bar_T, sigmas, kind):
    x = x_bar_T
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoiser(x, sigma)) / sigma
        x_euler = x + (sigma_next - sigma) * d
        if kind == "euler" or (sigma_next == 0 and kind != "heun_at_zero"):
            x = x_euler
        else:
            d_next = (x_euler - denoiser(x_euler, sigma_next)) / sigma_next
            x = x + (sigma_next - sigma) * (d + d_next) / (1 if kind == "no_half" else 2)
    if kind == "scaled":
        return x / (1 + sigmas[-1] ** 2) ** 0.5
    return x


HEUN_MISTAKES = [
    ("heun_at_zero", "the last step goes to sigma = 0, where d = (x - D)/sigma divides by zero: make it a plain Euler step."),
    ("euler", "that is Euler's method (first order): after the Euler guess, average its slope with the slope at the guess."),
    ("no_half", "the trapezoid AVERAGES the two slopes: (d + d_next) / 2."),
]


def _judge_heun_loop(student) -> Verdict:
    call_with = lambda fn, mixture, sigmas, x: fn(_denoiser(mixture), x.clone() * sigmas[0], list(sigmas))  # noqa: E731
    variants = [(lambda *a, k=k: _heun_variant(*a, kind=k), m) for k, m in HEUN_MISTAKES]
    x_T = _x_T()
    sigmas = _karras(10, to_zero=True)
    label = "case 1/2 (the data is one point, 10 Karras steps ending at sigma = 0)"
    got = _tensor_output(call_with(student, POINT, sigmas, x_T), x_T.shape)
    hint = lambda g, m, s: _diagnose(g, variants, lambda fn: call_with(fn, m, s, x_T))  # noqa: E731
    if not torch.isfinite(got).all():
        return Verdict(False, [f"{label}: the result contains NaN or inf."], hint(got, POINT, sigmas))
    error = float((got - POINT.means[0]).abs().max())
    if error > EXACT_ATOL:
        return Verdict(False, [f"{label}: Heun lands exactly on the one data point {POINT.means[0].tolist()} (the ODE's solution is "
                               f"a straight line); yours misses it by up to {error:.3g}."], hint(got, POINT, sigmas))
    a_start, a_end = 1 / (1 + SIGMA_MAX**2), 1 / (1 + SIGMA_MIN**2)
    exact = ode_reference(WIDE_MIXTURE, x_T * SIGMA_MAX * a_start**0.5, a_start, a_end) / a_end**0.5
    errors = []
    for n in HEUN_STEPS:
        sigmas = _karras(n, to_zero=False)
        got = _tensor_output(call_with(student, WIDE_MIXTURE, sigmas, x_T), x_T.shape)
        errors.append(_rms(got, exact))
    order = math.log2(errors[0] / errors[1]) if errors[1] > 0 else float("inf")
    lines = [f"case 2/2 (a Gaussian mixture, Karras grids from sigma = {SIGMA_MAX:.4g} to {SIGMA_MIN:.4g}): RMS error against the exact "
             f"ODE {errors[0]:.3g} at {HEUN_STEPS[0]} steps, {errors[1]:.3g} at {HEUN_STEPS[1]}: order {order:.2f}."]
    if order < 1.5 or errors[1] > 0.02:
        return Verdict(False, lines + ["Heun's method is second order: doubling the steps should divide the error by about 4."],
                       hint(got, WIDE_MIXTURE, sigmas))
    return Verdict(True, ["exact on the one-point data, including the last step to sigma = 0."] + lines)


register(Task("heun_sample", "a function heun_sample(denoiser, x_bar_T, sigmas) -> x_bar", _judge_heun_loop,
              "Karras Alg. 1: d = (x - D(x, sigma)) / sigma; x' = x + (sigma_next - sigma) d; unless sigma_next = 0, "
              "d' = (x' - D(x', sigma_next)) / sigma_next and x = x + (sigma_next - sigma) (d + d') / 2; else x = x'.", "function"))


# --------------------------------------------------------------------------------------------
# a training step on an nn.Module with an optimizer


class TinyEpsModel(torch.nn.Module):
    """A two-layer MLP eps_theta(x_t, t) for 2-D data: the input is (x_t, t / 1000)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.SiLU(), torch.nn.Linear(width, 2))

    def forward(self, x_t, t):
        return self.net(torch.cat([x_t, t.to(x_t.dtype)[:, None] / 1000], dim=1))


LEARNING_RATE, TRAIN_CALLS = 0.05, 30


def _training_setup():
    torch.manual_seed(0)
    model = TinyEpsModel().to(F64)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    g = torch.Generator().manual_seed(1)
    x0 = WIDE_MIXTURE.sample(256, generator=g)
    t = torch.randint(0, 1000, (256,), generator=g)
    noise = torch.randn(256, 2, generator=g, dtype=F64)
    return model, optimizer, x0, t, noise


def _l_simple(model, x0, t, noise, target="eps", model_input="x_t"):
    """DDPM Eq. 14, written out here: mean of (eps_theta(sqrt(abar) x0 + sqrt(1-abar) eps, t) - eps)^2."""
    a = SCHEDULE.alphas_cumprod[t][:, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    prediction = model(x_t if model_input == "x_t" else x0, t)
    return ((prediction - (noise if target == "eps" else x0)) ** 2).mean()


def _gradient_step(model, x0, t, noise):
    """The parameters after one SGD step on L_simple, computed on a copy with torch.autograd.grad."""
    twin = copy.deepcopy(model)
    loss = _l_simple(twin, x0, t, noise)
    grads = torch.autograd.grad(loss, list(twin.parameters()))
    return [p.detach() - LEARNING_RATE * g for p, g in zip(model.parameters(), grads)]


def _model_copy(parameters, model):
    """A copy of ``model`` with the given parameter values."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p, value in zip(twin.parameters(), parameters):
            p.copy_(value)
    return twin


def _judge_train_step(student) -> Verdict:
    model, optimizer, x0, t, noise = _training_setup()
    losses = []
    for call in range(TRAIN_CALLS):
        independent = float(_l_simple(model, x0, t, noise).detach())
        expected_params = _gradient_step(model, x0, t, noise) if call < 2 else None
        before = [p.detach().clone() for p in model.parameters()]
        loss = as_number(student(model, optimizer, x0.clone(), t.clone(), noise.clone()))
        losses.append(loss)
        if call == 0 and not math.isclose(loss, independent, rel_tol=1e-6):
            for kw, message in [(dict(target="x0"), "the regression target is the noise eps (DDPM Eq. 14), not x0."),
                                (dict(model_input="x0"), "the model must see the noised x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, not x0.")]:
                if math.isclose(loss, float(_l_simple(_model_copy(before, model), x0, t, noise, **kw).detach()), rel_tol=1e-6):
                    return Verdict(False, [f"first call: your loss {loss:.6g}, L_simple of the model you were given {independent:.6g}."], message)
            after_step = float(_l_simple(model, x0, t, noise).detach())
            hint = "return the loss computed BEFORE the step (the one you back-propagated)." if math.isclose(loss, after_step, rel_tol=1e-6) else ""
            return Verdict(False, [f"first call: your loss {loss:.6g}, L_simple of the model you were given {independent:.6g}."], hint)
        if expected_params is not None:
            moved = max(float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before))
            off = max(float((p.detach() - e).abs().max()) for p, e in zip(model.parameters(), expected_params))
            if moved == 0:
                return Verdict(False, [f"call {call + 1}: the parameters did not change."], "call optimizer.step() after loss.backward().")
            if off > 1e-9:
                hint = ("the gradients of the previous call were still in .grad: call optimizer.zero_grad() before loss.backward() "
                        "(PyTorch ADDS to .grad)." if call == 1 else "the step must be one SGD step on L_simple: params - lr * grad.")
                return Verdict(False, [f"call {call + 1}: your step moved the parameters by up to {moved:.3g}; they end up to "
                                       f"{off:.3g} away from one SGD step on L_simple (params - lr * grad)."], hint)
    if not losses[-1] < 0.9 * losses[0]:
        return Verdict(False, [f"the loss went from {losses[0]:.4g} to {losses[-1]:.4g} in {TRAIN_CALLS} calls: it should fall."])
    return Verdict(True, [f"the first loss equals L_simple computed independently; each step is one SGD step; the loss fell from "
                          f"{losses[0]:.4g} to {losses[-1]:.4g} in {TRAIN_CALLS} calls on the fixed batch."])


register(Task("train_step", "a function train_step(model, optimizer, x0, t, noise) -> loss", _judge_train_step,
              "DDPM Algorithm 1 with an optimizer: x_t from x0, t, noise; loss = mean((model(x_t, t) - noise)^2); "
              "optimizer.zero_grad(); loss.backward(); optimizer.step(); return loss.item().", "function"))


# --------------------------------------------------------------------------------------------
# find the bug: a DDIM loop


def buggy_ddim(eps_model, x_T, timesteps, alphas_cumprod):
    x = x_T
    for i, t in enumerate(timesteps):
        a_t = float(alphas_cumprod[t])
        a_prev = float(alphas_cumprod[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
        e = eps_model(x, t)
        x0_hat = (x - (1 - a_t) ** 0.5 * e) / a_t**0.5
        x = a_prev**0.5 * x0_hat + (1 - a_t) ** 0.5 * e
    return x


def buggy_euler(eps_model, noise, sigmas):
    x_bar = noise * sigmas[0]
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        eps = eps_model(x_bar, sigma)
        x_bar = x_bar + (sigma_next - sigma) * eps
    return x_bar


#: The line of each buggy sampler that is wrong, counting its ``def`` line as 1.
BUGGY_LINES = {"buggy_ddim": 8, "buggy_euler": 4}


def show_buggy(name: str) -> None:
    """Print a buggy sampler's source with line numbers (its ``def`` line is line 1)."""
    function = {"buggy_ddim": buggy_ddim, "buggy_euler": buggy_euler}[name]
    for number, line in enumerate(inspect.getsource(function).rstrip().splitlines(), 1):
        print(f"{number:2d}  {line}")


def _line_task(name: str, hint: str, explanation: str) -> Task:
    def judge(answer) -> Verdict:
        line = as_number(answer)
        if line == BUGGY_LINES[name]:
            return Verdict(True, [f"line {int(line)}. {explanation}"])
        return Verdict(False, [f"line {line:g} is not the wrong one."], hint)

    return Task(f"{name}_line", "a line number", judge, hint, "line")


register(_line_task("buggy_ddim", "run it on the one-point data, where DDIM must be exact, and compare each term of DDIM Eq. 12 with the code.",
                    "The direction pointing to x_t must use the noise level of the step's END: sqrt(1 - a_prev) e (DDIM Eq. 12)."))
register(Task("buggy_ddim_fixed", "the repaired function", _judge_ddim_loop, "compare each term with DDIM Eq. 12.", "function"))


def _euler_model(mixture: GaussianMixture):
    """An eps-prediction network's interface in sigma: ``eps_model(x_t, sigma)`` takes the VP input x_t = x_bar / sqrt(sigma^2 + 1)."""
    return lambda x_t, sigma: mixture.eps_at_sigma(x_t * (1 + float(sigma) ** 2) ** 0.5, float(sigma))


def _euler_variant(eps_model, noise, sigmas, kind):
    x_bar = noise * (1.0 if kind in ("no_init_sigma", "both") else sigmas[0])
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x_in = x_bar if kind in ("unscaled_input", "both") else x_bar / (sigma**2 + 1) ** 0.5
        x_bar = x_bar + (sigma_next - sigma) * eps_model(x_in, sigma)
    return x_bar


EULER_MISTAKES = [
    ("unscaled_input", "the network was trained on x_t = x_bar / sqrt(sigma^2 + 1), not on x_bar (diffusers' scale_model_input, k-diffusion's c_in)."),
    ("no_init_sigma", "x_bar at sigma_max is noise * sigma_max (diffusers' init_noise_sigma)."),
    ("both", "line 2 was right (x_bar starts at noise * sigma_max, diffusers' init_noise_sigma); the bug is what the network is given."),
]


def _judge_euler_loop(student) -> Verdict:
    x_T = _x_T()
    variants = [(lambda *a, k=k: _euler_variant(*a, kind=k), m) for k, m in EULER_MISTAKES]
    cases = [("the data is one point, 10 Karras steps ending at sigma = 0", POINT, _karras(10, True)),
             ("a Gaussian mixture, 50 Karras steps ending at sigma = 0", WIDE_MIXTURE, _karras(50, True))]
    for number, (label, mixture, sigmas) in enumerate(cases, 1):
        call = lambda fn: fn(_euler_model(mixture), x_T.clone(), list(sigmas))  # noqa: E731
        got = _tensor_output(call(student), x_T.shape)
        where = f"case {number}/{len(cases)} ({label})"
        if not torch.isfinite(got).all():
            return Verdict(False, [f"{where}: the result contains NaN or inf."], _diagnose(got, variants, call))
        if mixture is POINT:
            error = float((got - POINT.means[0]).abs().max())
            if error > EXACT_ATOL:
                return Verdict(False, [f"{where}: Euler lands exactly on the one data point; yours misses it by up to {error:.3g}."],
                               _diagnose(got, variants, call))
        else:
            a_start = 1 / (1 + SIGMA_MAX**2)
            error = _rms(got, ode_reference(mixture, x_T * SIGMA_MAX * a_start**0.5, a_start, 1.0))
            if error > 0.05:
                return Verdict(False, [f"{where}: RMS error {error:.3g} against the exact ODE."], _diagnose(got, variants, call))
    return Verdict(True, [f"exact on the one-point data; RMS error {error:.3g} against the exact ODE on the mixture (50 steps)."])


register(_line_task("buggy_euler", "which quantity does the network expect as its input: x_bar, or the VP-scaled x_t?",
                    "The network was trained on x_t = x_bar / sqrt(sigma^2 + 1) (diffusers' scale_model_input); fed x_bar it sees "
                    "an input sqrt(sigma^2 + 1) times too large."))
register(Task("buggy_euler_fixed", "the repaired function", _judge_euler_loop, "compare the model's input with what it was trained on.", "function"))


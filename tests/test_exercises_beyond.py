"""The exercises beyond transcription (notebooks/exercises/07-08): every checker accepts the reference solution,
rejects each typical mistake with a hint that names it, reports an unanswered stub without raising, and runs fast.
The typical mistakes here are written independently of the checkers' own lists."""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import json
import time
from pathlib import Path

import pytest
import torch

import diffusion_notes.exercises as exercises
from diffusion_notes.exercises import derive_and_predict, loops_and_bugs

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS_PATH = ROOT / "notebooks" / "exercises" / "solutions" / "beyond.py"


def _load_solutions():
    spec = importlib.util.spec_from_file_location("beyond_solutions", SOLUTIONS_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


solutions = _load_solutions()
NAMES = sorted(exercises.BEYOND)


def _check(name, answer) -> bool:
    return getattr(exercises, f"check_{name}")(answer)


# --- wrong loops and steps, written from their description ------------------------------------------


def _ddim_without_last_step(eps_model, x_T, timesteps, alphas_cumprod):
    x = x_T
    for t, t_next in zip(timesteps[:-1], timesteps[1:]):
        a_t, a_prev = float(alphas_cumprod[t]), float(alphas_cumprod[t_next])
        e = eps_model(x, t)
        x = a_prev**0.5 * (x - (1 - a_t) ** 0.5 * e) / a_t**0.5 + (1 - a_prev) ** 0.5 * e
    return x


def _ddim_with_t_minus_one(eps_model, x_T, timesteps, alphas_cumprod):
    x = x_T
    for t in timesteps:
        a_t = float(alphas_cumprod[t])
        a_prev = float(alphas_cumprod[t - 1]) if t > 0 else 1.0
        e = eps_model(x, t)
        x = a_prev**0.5 * (x - (1 - a_t) ** 0.5 * e) / a_t**0.5 + (1 - a_prev) ** 0.5 * e
    return x


def _heun_also_on_the_last_step(denoiser, x_bar_T, sigmas):
    x = x_bar_T
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoiser(x, s)) / s
        guess = x + (s_next - s) * d
        x = x + (s_next - s) * (d + (guess - denoiser(guess, s_next)) / s_next) / 2
    return x


def _euler_not_heun(denoiser, x_bar_T, sigmas):
    x = x_bar_T
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (s_next - s) * (x - denoiser(x, s)) / s
    return x


def _x_t(x0, t, noise):
    from diffusion_notes.schedules import NoiseSchedule

    a = NoiseSchedule.stable_diffusion().alphas_cumprod[t][:, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def _train_without_zero_grad(model, optimizer, x0, t, noise):
    loss = ((model(_x_t(x0, t, noise), t) - noise) ** 2).mean()
    loss.backward()
    optimizer.step()
    return loss.item()


def _train_on_x0_target(model, optimizer, x0, t, noise):
    loss = ((model(_x_t(x0, t, noise), t) - x0) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _train_without_step(model, optimizer, x0, t, noise):
    loss = ((model(_x_t(x0, t, noise), t) - noise) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    return loss.item()


def _euler_without_init_sigma(eps_model, noise, sigmas):
    x_bar = noise  # the input is scaled, but x_bar does not start at sigma_max
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x_bar = x_bar + (s_next - s) * eps_model(x_bar / (s**2 + 1) ** 0.5, s)
    return x_bar


def _euler_fixed_only_the_start(eps_model, noise, sigmas):
    x_bar = noise  # "fixed" the wrong line: drops init_noise_sigma and keeps the unscaled input
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x_bar = x_bar + (s_next - s) * eps_model(x_bar, s)
    return x_bar


# (wrong answer, a word the printed hint must contain), several per exercise
MISTAKES = {
    "two_step_variance": [(0.3, "sqrt(1 - beta_2)"), (0.72, "SIGNAL"), ((0.1**0.5 + 0.2**0.5) ** 2, "VARIANCES"), (0.28**0.5, "standard deviation")],
    "posterior_variance": [(0.2, "fixed_large"), (0.56, "upside down"), (0.1, "narrows")],
    "snr_where_errors_equal": [(0.5, "abar / (1 - abar)"), (0, "infinitely")],
    "alpha_bar_at_sigma": [(1 / 3, "standard deviation"), (0.25, "SNR"), (0.8, "1 - abar")],
    "heun_guided_evaluations": [(100, "single Euler"), (49, "twice"), (25, "twice per step")],
    "ddim_order": [(2, "ONE step"), (0.5, "Euler-Maruyama"), (4, "multistep")],
    "guidance_effect": [({"confidence": "up", "diversity": "same"}, "alike"), ({"confidence": "down", "diversity": "down"}, "typical")],
    "ddim_sample": [(_ddim_without_last_step, "one more step"), (_ddim_with_t_minus_one, "NEXT VISITED"),
                    (loops_and_bugs.buggy_ddim, "sqrt(1 - a_prev)")],
    "heun_sample": [(_heun_also_on_the_last_step, "divides by zero"), (_euler_not_heun, "first order")],
    "train_step": [(_train_without_zero_grad, "zero_grad"), (_train_on_x0_target, "not x0"), (_train_without_step, "optimizer.step()")],
    "buggy_ddim_line": [(7, "Eq. 12"), (5, "Eq. 12")],
    "buggy_ddim_fixed": [(loops_and_bugs.buggy_ddim, "sqrt(1 - a_prev)"), (_ddim_without_last_step, "one more step")],
    "buggy_euler_line": [(2, "VP-scaled"), (5, "VP-scaled")],
    "buggy_euler_fixed": [(loops_and_bugs.buggy_euler, "scale_model_input"), (_euler_fixed_only_the_start, "line 2 was right"),
                          (_euler_without_init_sigma, "init_noise_sigma")],
}


def test_at_least_ten_exercises_each_with_mistakes():
    assert len(exercises.BEYOND) >= 10
    assert set(MISTAKES) == set(exercises.BEYOND)
    assert not set(exercises.BEYOND) & set(exercises.EXERCISES)  # the transcription exercises keep their own registry


@pytest.mark.parametrize("name", NAMES)
def test_solution_accepted(name, capsys):
    assert _check(name, getattr(solutions, name)) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("name,index", [(n, i) for n in NAMES for i in range(len(MISTAKES[n]))])
def test_typical_mistake_rejected_with_hint(name, index, capsys):
    wrong, hint_word = MISTAKES[name][index]
    assert _check(name, wrong) is False
    out = capsys.readouterr().out
    assert "not right yet" in out and "hint:" in out and hint_word in out, out


@pytest.mark.parametrize("name", NAMES)
def test_stub_reported_not_raised(name, capsys):
    task = exercises.BEYOND[name]
    if task.kind == "function":
        def stub(*args, **kwargs):
            raise NotImplementedError

        assert _check(name, stub) is False
        assert "not implemented yet" in capsys.readouterr().out
    else:
        assert _check(name, None) is False
        assert "not answered yet" in capsys.readouterr().out


@pytest.mark.parametrize("name", NAMES)
def test_other_errors_reported_not_raised(name, capsys):
    task = exercises.BEYOND[name]
    if task.kind == "function":
        def broken(*args, **kwargs):
            raise ValueError("oops")

        assert _check(name, broken) is False
        assert "your function raised ValueError: oops" in capsys.readouterr().out
        assert _check(name, lambda *args, **kwargs: "a string") is False  # not even a tensor or a number
        assert "expected" in capsys.readouterr().out
    else:
        assert _check(name, "a word" if name != "guidance_effect" else {"confidence": "higher"}) is False
        assert "expected" in capsys.readouterr().out


@pytest.mark.parametrize("name", NAMES)
def test_checkers_are_fast(name, capsys):
    """Under 2 s each, once the process has paid its one-time costs (the judge's fit, torch.optim's first import)."""
    answer = getattr(solutions, name)
    _check(name, answer)
    start = time.perf_counter()
    _check(name, answer)
    assert time.perf_counter() - start < 2.0


def test_the_numbers_match_closed_forms():
    """The checkers compute their values by other routes (composition, conditioning, bisection, counting):
    they must agree with the closed forms of the papers."""
    b1, b2 = derive_and_predict.BETA_1, derive_and_predict.BETA_2
    abar_1, abar_2 = 1 - b1, (1 - b1) * (1 - b2)
    assert derive_and_predict._two_step_variance() == pytest.approx(1 - abar_2, rel=1e-12)
    assert derive_and_predict._posterior_variance() == pytest.approx((1 - abar_1) / (1 - abar_2) * b2, rel=1e-12)  # DDPM Eq. 7
    assert derive_and_predict._snr_where_errors_equal() == pytest.approx(1.0, rel=1e-9)
    assert derive_and_predict._alpha_bar_at_sigma() == pytest.approx(1 / (1 + derive_and_predict.SIGMA**2), rel=1e-9)
    for steps in (3, derive_and_predict.HEUN_STEPS):
        assert derive_and_predict.count_heun_evaluations(steps) == 2 * (2 * steps - 1)


def test_measured_ddim_order_is_first_order():
    p, (e1, e2) = derive_and_predict.measured_ddim_order()
    assert 0.75 < p < 1.25 and e2 < e1


def test_ddim_and_euler_are_exact_on_one_point_on_any_grid():
    """The premise of the loop checkers, checked on the library's samplers: with one data point, DDIM (eta = 0)
    and Euler in sigma land on it exactly from anywhere, on any grid."""
    from diffusion_notes.sampling import sample
    from diffusion_notes.schedules import NoiseSchedule

    point = loops_and_bugs.POINT
    schedule = NoiseSchedule.stable_diffusion()
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for sampler, steps in [("ddim", 7), ("euler", 5)]:
        x0 = sample(point.eps_model(schedule), x_T, schedule, sampler=sampler, steps=steps, set_alpha_to_one=True)
        torch.testing.assert_close(x0, point.means[0].expand_as(x0), rtol=0, atol=1e-9)


@pytest.mark.parametrize("buggy,fixed", [("buggy_ddim", "ddim_sample"), ("buggy_euler", "buggy_euler_fixed")])
def test_the_bug_is_on_the_line_the_checker_accepts(buggy, fixed):
    """The buggy sampler differs from the repaired one (the solution) on its def line (its name) and on exactly
    the line the line-checker accepts."""
    a = inspect.getsource(getattr(loops_and_bugs, buggy)).splitlines()
    b = inspect.getsource(getattr(solutions, fixed)).splitlines()
    assert len(a) == len(b)
    differing = [i + 1 for i, (x, y) in enumerate(zip(a, b)) if x != y]
    assert differing == [1, loops_and_bugs.BUGGY_LINES[buggy]], list(difflib.unified_diff(a, b, lineterm=""))


def test_the_notebook_states_the_givens_the_checkers_use():
    text = "".join("".join(c["source"]) for c in json.loads((ROOT / "notebooks/exercises/07_derive_and_predict.ipynb").read_text())["cells"])
    for given in [f"beta_1 = {derive_and_predict.BETA_1}", f"beta_2 = {derive_and_predict.BETA_2}",
                  f"sigma = {derive_and_predict.SIGMA:g}", f"N = {derive_and_predict.HEUN_STEPS}"]:
        assert given in text, given


def test_the_tolerances_the_notebooks_state_are_the_checkers():
    from diffusion_notes.exercises.beyond import NUMBER_RTOL

    def listed(name):
        return json.loads((ROOT / "notebooks/exercises" / name).read_text())["metadata"]["diffusion_notes"]["numbers"]

    assert f"{NUMBER_RTOL:.1%}" in listed("07_derive_and_predict.ipynb")
    assert f"{derive_and_predict.SAME_WITHIN:.0%}" in listed("07_derive_and_predict.ipynb")
    assert f"{loops_and_bugs.EXACT_ATOL:.0e}".replace("e-08", "e-8") in listed("08_loops_and_bugs.ipynb")

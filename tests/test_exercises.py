"""Every exercise checker accepts the reference solution, rejects a typical mistake with a hint,
and reports (never raises) a stub that is not implemented yet."""

from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path

import pytest
import torch

import diffusion_notes.exercises as exercises

SOLUTIONS_PATH = Path(__file__).resolve().parents[1] / "notebooks" / "exercises" / "solutions" / "solutions.py"


def _load_solutions():
    spec = importlib.util.spec_from_file_location("exercise_solutions", SOLUTIONS_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


solutions = _load_solutions()


def _at(buffer, t):
    return buffer[t].reshape(-1, 1, 1, 1)


def _ddim_no_sigma_in_direction(x, e_t, a_t, a_prev, sigma_t, noise):
    pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
    return a_prev**0.5 * pred_x0 + (1 - a_prev) ** 0.5 * e_t + sigma_t * noise


def _posterior_with_beta_variance(x0, x_t, t, betas):
    mean, _ = solutions.posterior_mean_variance(x0, x_t, t, betas)
    return mean, _at(betas, t)


def _euler_instead_of_heun(eps_fn, x, t, t_next, a_t, a_prev):
    return solutions._ddim(x, eps_fn(x, t), a_t, a_prev)


# One typical mistake per exercise, written independently of the checkers' own list, and a word the
# printed hint must contain.
MISTAKES = {
    "alphas_cumprod": (lambda betas: torch.cumprod(betas, 0), "1 - beta"),
    "alphas_cumprod_prev": (lambda alphas_cumprod: torch.cat([alphas_cumprod[1:], alphas_cumprod[-1:]]), "wrong way"),
    "snr": (lambda alphas_cumprod: (alphas_cumprod / (1 - alphas_cumprod)).sqrt(), "VARIANCES"),
    "q_sample": (lambda x0, t, noise, alphas_cumprod: _at(alphas_cumprod, t) * x0 + (1 - _at(alphas_cumprod, t)) * noise, "standard deviations"),
    "posterior_mean_variance": (_posterior_with_beta_variance, "beta_tilde"),
    "predict_start_from_noise": (lambda x_t, t, noise, alphas_cumprod: x_t - (1 - _at(alphas_cumprod, t)).sqrt() * noise, "divide"),
    "get_v": (lambda x0, noise, t, alphas_cumprod: -solutions.get_v(x0, noise, t, alphas_cumprod), "sign"),
    "predict_start_from_z_and_v": (lambda x_t, t, v, alphas_cumprod: _at(alphas_cumprod, t).sqrt() * x_t + (1 - _at(alphas_cumprod, t)).sqrt() * v, "MINUS"),
    "l_simple": (lambda eps_model, x0, t, noise, alphas_cumprod: torch.mean((eps_model(solutions.q_sample(x0, t, noise, alphas_cumprod), t) - x0) ** 2), "noise"),
    "ddim_sigma": (lambda a_t, a_prev, eta: eta * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev), "square root"),
    "ddim_step": (_ddim_no_sigma_in_direction, "sigma_t^2"),
    "ddim_timesteps": (lambda num_steps, num_train_timesteps: torch.arange(0, num_train_timesteps, num_train_timesteps // num_steps), "adds 1"),
    "adams_bashforth_coefficients": (lambda order: list(reversed(solutions.adams_bashforth_coefficients(order))), "reversed"),
    "pseudo_improved_euler": (_euler_instead_of_heun, "Euler"),
    "classifier_free_guidance": (lambda e_uncond, e_cond, scale: e_cond + scale * (e_cond - e_uncond), "w + 1"),
}


def _checker(name):
    return getattr(exercises, f"check_{name}")


def test_at_least_twelve_exercises():
    assert len(exercises.EXERCISES) >= 12
    assert set(MISTAKES) == set(exercises.EXERCISES)


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_solution_accepted(name, capsys):
    assert _checker(name)(getattr(solutions, name)) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_typical_mistake_rejected_with_hint(name, capsys):
    mistake, hint_word = MISTAKES[name]
    assert _checker(name)(mistake) is False
    out = capsys.readouterr().out
    assert "expected" in out and "got" in out
    assert "hint:" in out and hint_word in out, out


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_stub_reported_not_raised(name, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError("write your solution here")

    assert _checker(name)(stub) is False
    assert "not implemented yet" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_other_errors_reported_not_raised(name, capsys):
    def broken(*args, **kwargs):
        raise ValueError("oops")

    assert _checker(name)(broken) is False
    assert "raised ValueError: oops" in capsys.readouterr().out


def test_wrong_shape_reported(capsys):
    assert exercises.check_q_sample(lambda x0, t, noise, alphas_cumprod: x0.flatten()) is False
    assert "shape" in capsys.readouterr().out


def test_solutions_are_exact_fractions():
    assert solutions.adams_bashforth_coefficients(4) == [Fraction(55, 24), Fraction(-59, 24), Fraction(37, 24), Fraction(-9, 24)]

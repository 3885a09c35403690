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


def _ddpm_with_beta_variance(x, e_t, a_t, a_prev, noise):
    beta = 1 - a_t / a_prev
    mean = solutions.ddpm_ancestral_step(x, e_t, a_t, a_prev, torch.zeros_like(noise))
    return mean + beta**0.5 * noise


def _plms_keeping_the_combined_estimate(x, e_t, old_eps, a_t, a_prev):
    x_prev, _ = solutions.plms_step_with_history(x, e_t, old_eps, a_t, a_prev)
    # undo the DDIM transfer x_prev = sqrt(a_prev / a_t) x + c e' to recover the combined e'
    c = (1 - a_prev) ** 0.5 - (a_prev * (1 - a_t) / a_t) ** 0.5
    e_prime = (x_prev - (a_prev / a_t) ** 0.5 * x) / c
    return x_prev, (list(old_eps) + [e_prime])[-3:]


def _gradient_ascent(eps_model, params, x0, t, noise, alphas_cumprod, lr):
    loss, new_params = solutions.training_step(eps_model, params, x0, t, noise, alphas_cumprod, lr)
    return loss, 2 * params - new_params


def _attention_scaled_by_full_width(x, context, W_q, W_k, W_v, heads):
    # the heads' logits scaled by sqrt(inner) instead of sqrt(d_head): the same as scaling q by sqrt(1 / heads)
    return solutions.cross_attention(x / heads**0.5, context, W_q, W_k, W_v, heads)


def _eps_with_a_minus_sign(x_t, t, v, alphas_cumprod):
    x0, _ = solutions.x0_and_eps_from_v(x_t, t, v, alphas_cumprod)
    a = _at(alphas_cumprod, t)
    return x0, a.sqrt() * v - (1 - a).sqrt() * x_t


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
    "ddpm_ancestral_step": (_ddpm_with_beta_variance, "beta_tilde"),
    "plms_step_with_history": (_plms_keeping_the_combined_estimate, "RAW"),
    "training_step": (_gradient_ascent, "descent"),
    "cross_attention": (_attention_scaled_by_full_width, "ONE head"),
    "x0_and_eps_from_v": (_eps_with_a_minus_sign, "added"),
    "to_sigma_view": (lambda x_t, t, alphas_cumprod: (x_t / _at(alphas_cumprod, t).sqrt(), (1 - alphas_cumprod[t]).sqrt()), "divide the noise std"),
    "euler_step_in_sigma": (lambda x_bar, eps, sigma, sigma_next: x_bar - (sigma_next - sigma) * eps, "DEcreases"),
    "ancestral_sigmas": (lambda sigma, sigma_next, eta: (sigma_next - min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5), min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)), "variances add"),
    "karras_sigmas": (lambda n, sigma_min, sigma_max, rho=7.0: solutions.karras_sigmas(n, sigma_min, sigma_max, rho).flip(0), "reversed"),
}


def _checker(name):
    return getattr(exercises, f"check_{name}")


def test_at_least_twenty_four_exercises():
    assert len(exercises.EXERCISES) >= 24
    assert set(MISTAKES) <= set(exercises.EXERCISES)


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_solution_accepted(name, capsys):
    assert _checker(name)(getattr(solutions, name)) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_typical_mistake_rejected_with_hint(name, capsys):
    mistake, hint_word = MISTAKES[name]
    assert _checker(name)(mistake) is False
    out = capsys.readouterr().out
    assert "expected" in out and "got" in out
    assert "hint:" in out and hint_word in out, out


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_stub_reported_not_raised(name, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError("write your solution here")

    assert _checker(name)(stub) is False
    assert "not implemented yet" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(MISTAKES))
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


@pytest.mark.parametrize("name", ["predict_start_from_noise", "predict_start_from_z_and_v"])
def test_clamping_x0_is_rejected(name, capsys):
    """CompVis's .clamp(-1, 1) is a separate, optional step; the checker's imperfect estimates expose it."""
    reference = getattr(solutions, name)

    def clamped(**kwargs):
        return reference(**kwargs).clamp(-1, 1)

    assert _checker(name)(clamped) is False
    out = capsys.readouterr().out
    assert "imperfect" in out and "do not clamp" in out, out


def test_a_failure_names_the_batch_element_and_timestep_of_the_largest_difference(capsys):
    def wrong_at_the_last_element(x_t, t, noise, alphas_cumprod):
        x0 = solutions.predict_start_from_noise(x_t, t, noise, alphas_cumprod)
        return x0 + (torch.arange(len(t)) == len(t) - 1).double().reshape(-1, 1, 1, 1) * 0.01

    assert exercises.check_predict_start_from_noise(wrong_at_the_last_element) is False
    out = capsys.readouterr().out
    assert "(batch element 3, t = 999)" in out, out


def test_euler_in_sigma_is_ddim_with_eta_zero():
    """The sigma view's Euler step, mapped back by x_t = sqrt(abar) x_bar, is DDIM Eq. 12 with eta = 0
    (DDIM Eq. 14): an independent check of the reference the sigma exercise uses."""
    from diffusion_notes.samplers import ddim_step
    from diffusion_notes.schedules import NoiseSchedule

    s = NoiseSchedule.stable_diffusion()
    x_t, eps = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    for t, t_prev in [(999, 979), (501, 401), (21, 1)]:
        a_t, a_prev = float(s.alphas_cumprod[t]), float(s.alphas_cumprod[t_prev])
        x_bar_next = solutions.euler_step_in_sigma(x_t / a_t**0.5, eps, float(s.sigmas[t]), float(s.sigmas[t_prev]))
        torch.testing.assert_close(a_prev**0.5 * x_bar_next, ddim_step(x_t, eps, a_t, a_prev)[0], rtol=1e-12, atol=1e-12)


def test_karras_reference_equals_diffusers_convert_to_karras():
    from diffusers import EulerDiscreteScheduler

    from diffusion_notes.exercises.sigma_view import _karras_ref
    from diffusion_notes.schedules import NoiseSchedule

    sigmas = NoiseSchedule.stable_diffusion().sigmas
    oracle = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    theirs = torch.as_tensor(oracle._convert_to_karras(sigmas.flip(0), 12), dtype=torch.float64)
    torch.testing.assert_close(_karras_ref(12, float(sigmas[0]), float(sigmas[-1])), theirs, rtol=1e-12, atol=0)


def test_ancestral_reference_equals_diffusers_euler_ancestral_at_eta_one():
    """diffusers' EulerAncestralDiscreteScheduler.step (eta = 1) with the eps prediction 1 everywhere moves
    x by (sigma_down - sigma) * 1 and adds sigma_up * z: both sigmas of the reference must reproduce it."""
    from diffusers import EulerAncestralDiscreteScheduler

    from diffusion_notes.exercises.sigma_view import _ancestral_ref

    oracle = EulerAncestralDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    oracle.set_timesteps(10)
    for i in (0, 4, 8, 9):  # the last step goes to sigma = 0
        oracle._step_index = i
        sigma, sigma_next = float(oracle.sigmas[i]), float(oracle.sigmas[i + 1])
        x = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(i))
        out = oracle.step(torch.ones_like(x), oracle.timesteps[i], x, generator=torch.Generator().manual_seed(7)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
        down, up = _ancestral_ref(sigma, sigma_next, 1.0)
        torch.testing.assert_close(out, x + (down - sigma) + up * z, rtol=1e-5, atol=1e-5)

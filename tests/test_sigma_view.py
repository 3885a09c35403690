"""The σ view's small formulas against closed forms and against the DDPM/DDIM formulas they restate."""

import math

import numpy as np
import pytest
import torch

from diffusion_notes.forward import predict_start_from_noise
from diffusion_notes.samplers import (ADAMS_BASHFORTH, ancestral_step, ddim_sigma, ddim_step, denoise, edm_scalings,
                                      lms_coefficient, sigma_to_t, t_to_sigma, to_d)
from diffusion_notes.sampling import sample
from diffusion_notes.schedules import NoiseSchedule

from oracle_models import dummy_eps

SCHEDULE = NoiseSchedule.stable_diffusion()


def x(seed=0):
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("t", [0, 250, 999])
def test_edm_preconditioning_turns_eps_into_the_ddpm_x0_estimate(t):
    a = float(SCHEDULE.alphas_cumprod[t])
    sigma = math.sqrt((1 - a) / a)
    c_skip, c_out, c_in = edm_scalings(sigma)
    x_t = x()
    x_bar = x_t / math.sqrt(a)
    assert c_skip == 1 and c_out == -sigma
    torch.testing.assert_close(c_in * x_bar, x_t, rtol=1e-12, atol=1e-12)  # the UNet sees x_t
    expected = predict_start_from_noise(x_t, torch.full((2,), t), dummy_eps(x_t, torch.full((2,), float(t))), SCHEDULE)
    model = lambda x_in, t_real: dummy_eps(x_in, torch.full((2,), t_real, dtype=torch.float64))  # noqa: E731  (sample's wrapper)
    torch.testing.assert_close(denoise(model, x_bar, sigma, float(t)), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(to_d(x_bar, sigma, expected), dummy_eps(x_t, torch.full((2,), float(t))), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("t, t_prev", [(999, 899), (500, 480), (20, 0)])
def test_ancestral_split_is_the_ddpm_posterior_noise_in_sigma(t, t_prev):
    """eta = 1: sigma_up equals DDIM Eq. 16's sigma_t (eta = 1) measured in x-bar units at the target level."""
    a_t, a_prev = float(SCHEDULE.alphas_cumprod[t]), float(SCHEDULE.alphas_cumprod[t_prev])
    s_from, s_to = math.sqrt((1 - a_t) / a_t), math.sqrt((1 - a_prev) / a_prev)
    sigma_down, sigma_up = ancestral_step(s_from, s_to, 1.0)
    assert sigma_down**2 + sigma_up**2 == pytest.approx(s_to**2, rel=1e-12)
    assert sigma_up == pytest.approx(float(ddim_sigma(a_t, a_prev, 1.0)) / math.sqrt(a_prev), rel=1e-10)
    assert ancestral_step(s_from, s_to, 0.0) == (s_to, 0.0)


def test_euler_in_sigma_is_ddim_with_eta_zero():
    """DDIM Eq. 12 (eta = 0) divided by sqrt(a_prev) is the Euler step of dx/dsigma = eps (Song et al. 2021, Eq. 14)."""
    for spacing in ("linspace", "trailing"):
        ours = sample(dummy_eps, x(1), SCHEDULE, "euler", 20, spacing=spacing, set_alpha_to_one=False)
        ddim = sample(dummy_eps, x(1), SCHEDULE, "ddim", 20, spacing=spacing, set_alpha_to_one=False)
        torch.testing.assert_close(ours, ddim, rtol=0, atol=1e-10)
    x_t, e = x(2), x(3)
    x_prev, _ = ddim_step(x_t, e, 0.3, 0.6)
    s, s_prev = math.sqrt(0.7 / 0.3), math.sqrt(0.4 / 0.6)
    torch.testing.assert_close(x_prev / math.sqrt(0.6), x_t / math.sqrt(0.3) + (s_prev - s) * e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_lms_coefficients_on_a_uniform_grid_are_adams_bashforth(order):
    sigmas = np.arange(10.0, 0.0, -1.0)  # step -1: the integral over one step is -1 times the AB weight
    i = 5
    coefficients, denominator = ADAMS_BASHFORTH[order]
    for j, c in enumerate(coefficients):
        assert lms_coefficient(sigmas, i, j, order) == pytest.approx(-c / denominator, rel=1e-12)


def test_sigma_to_t_inverts_t_to_sigma_and_is_exact_at_integers():
    sigmas = SCHEDULE.sigmas
    t = torch.tensor([0.0, 0.25, 17.5, 500.0, 998.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(sigma_to_t(t_to_sigma(t, sigmas), sigmas), t, rtol=0, atol=1e-9)
    assert torch.equal(t_to_sigma(torch.arange(1000.0, dtype=torch.float64), sigmas), sigmas)
    # halfway between two timesteps: the geometric mean of their sigmas (log-linear interpolation)
    assert float(t_to_sigma(torch.tensor(10.5), sigmas)) == pytest.approx(math.sqrt(float(sigmas[10] * sigmas[11])), rel=1e-12)

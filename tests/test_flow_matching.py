"""Flow matching against independent references: diffusers' flow-matching schedulers (grids, shifts, Euler and Heun
loops), the exact velocity field of a Gaussian mixture, automatic differentiation and closed forms.

The identity that ties flow matching to the rest of the package: DDIM with eta = 0 is Euler's method on the straight
path's ODE after the change of variables t = sigma / (1 + sigma), checked here to float64 rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion_notes import flow_matching as fm
from diffusion_notes.flow_sampling import flow_sigmas, model_evaluations, sample_flow, sample_flow_euler
from diffusion_notes.forward import get_v
from diffusion_notes.mixture import GaussianMixture
from diffusion_notes.samplers.ddim import ddim_step
from diffusion_notes.schedules import NoiseSchedule

diffusers = pytest.importorskip("diffusers")


def _velocity_model(x, t):
    """A smooth nonlinear stand-in for a network: depends on x and on the timestep like one would."""
    s = torch.as_tensor(t, dtype=torch.float64) / 1000
    return (torch.tanh(1.3 * x) * torch.cos(2.0 * s) + 0.3 * x * s - 0.2).to(x.dtype)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 4, 28])
def test_grid_equals_diffusers_flow_match_euler(shift, steps):
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    ours = flow_sigmas(steps, shift)
    assert ours.shape == scheduler.sigmas.shape
    torch.testing.assert_close(ours.float(), scheduler.sigmas, rtol=0, atol=1e-6)


def test_shift_equals_diffusers_training_sigmas():
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    levels = torch.arange(1000, 0, -1, dtype=torch.float64) / 1000
    torch.testing.assert_close(fm.shift_sigmas(levels, 3.0).float(), scheduler.sigmas, rtol=0, atol=1e-6)
    assert fm.shift_sigmas(torch.tensor([0.0, 1.0]), 3.0).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="shift"):
        fm.shift_sigmas(levels, 0.0)


@pytest.mark.parametrize("image_seq_len", [256, 1024, 4096])
def test_flux_shift_equals_diffusers_dynamic_shifting(image_seq_len):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = fm.flux_mu(image_seq_len)
    assert mu == pytest.approx(calculate_shift(image_seq_len), abs=1e-12)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    sigmas = np.linspace(1.0, 1 / 20, 20)
    scheduler.set_timesteps(20, sigmas=sigmas, mu=mu)
    ours = torch.tensor([fm.flux_time_shift(mu, s) for s in sigmas] + [0.0])
    torch.testing.assert_close(ours.float(), scheduler.sigmas, rtol=0, atol=1e-6)
    # with sigma = 1 it is SD3's shift with s = exp(mu)
    assert fm.flux_time_shift(mu, 0.3) == pytest.approx(float(fm.shift_sigmas(torch.tensor(0.3, dtype=torch.float64), math.exp(mu))))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_loop_equals_diffusers_flow_match_euler(shift):
    steps = 12
    x1 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    x = x1.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(_velocity_model(x, float(t)), t, x).prev_sample
    ours = sample_flow(_velocity_model, x1.clone(), steps, "flow_euler", shift=shift)
    torch.testing.assert_close(ours, x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_heun_loop_equals_diffusers_flow_match_heun(shift):
    steps = 10
    x1 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    scheduler = diffusers.FlowMatchHeunDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    x, calls = x1.clone(), 0
    for t in scheduler.timesteps:
        x = scheduler.step(_velocity_model(x, float(t)), t, x).prev_sample
        calls += 1
    ours = sample_flow(_velocity_model, x1.clone(), steps, "flow_heun", shift=shift)
    # diffusers recovers the velocity as (x - (x - sigma v)) / sigma in float32, which loses about
    # |x| / (sigma |v|) ulps at small sigma: a few 1e-6 here, where Euler's loop (which uses v directly) agrees to 1e-6
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)
    assert calls == model_evaluations("flow_heun", steps)


def test_ddim_with_eta_0_is_euler_on_the_straight_path():
    """Convert x_t to the straight path (z, t), take one Euler step with the velocity of the same eps, convert back:
    DDIM Eq. 12 with eta = 0, to float64 rounding, at every step of SD's 50-step grid, on the exact mixture denoiser."""
    mixture = GaussianMixture.example()
    schedule = NoiseSchedule.from_name("scaled_linear", 1000)
    eps_model = mixture.eps_model(schedule)
    timesteps = torch.arange(981, -1, -20)
    a = schedule.alphas_cumprod.double()
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    worst = 0.0
    for i, t in enumerate(timesteps):
        a_t = a[t]
        a_prev = a[timesteps[i + 1]] if i + 1 < len(timesteps) else a[0]
        e_t = eps_model(x, torch.full((x.shape[0],), int(t)))
        x_ddim, _ = ddim_step(x, e_t, float(a_t), float(a_prev))
        z, s = fm.vp_to_flow(x, a_t)
        _, s_prev = fm.vp_to_flow(x, a_prev)
        z_next = z + (s_prev - s) * fm.velocity_from_eps(z, e_t, s)
        x_flow, a_back = fm.flow_to_vp(z_next, s_prev)
        assert float(a_back) == pytest.approx(float(a_prev), rel=1e-13)
        worst = max(worst, float((x_flow - x_ddim).abs().max() / x_ddim.abs().max()))
        x = x_ddim
    assert worst < 1e-13


def test_vp_to_flow_and_back_is_the_identity_and_t_is_sigma_over_1_plus_sigma():
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for a in [0.9991, 0.5, 0.0047]:
        z, t = fm.vp_to_flow(x, a)
        sigma = math.sqrt((1 - a) / a)
        assert float(t) == pytest.approx(sigma / (1 + sigma), rel=1e-14)
        back, a_back = fm.flow_to_vp(z, t)
        torch.testing.assert_close(back, x, rtol=1e-14, atol=0)
        assert float(a_back) == pytest.approx(a, rel=1e-13)


def test_path_velocity_is_the_time_derivative_and_v_prediction_is_the_trig_paths_velocity():
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    t = torch.tensor(0.37, dtype=torch.float64)
    _, d_linear = torch.autograd.functional.jvp(lambda s: fm.flow_path(x0, eps, s), t, torch.ones_like(t))
    torch.testing.assert_close(d_linear, fm.flow_velocity_target(x0, eps), rtol=1e-14, atol=1e-14)

    def trig(s):
        return fm.affine_path(x0, eps, torch.cos(math.pi * s / 2), torch.sin(math.pi * s / 2))

    _, d_trig = torch.autograd.functional.jvp(trig, t, torch.ones_like(t))
    phi = math.pi * float(t) / 2
    velocity = fm.affine_velocity(x0, eps, -math.pi / 2 * math.sin(phi), math.pi / 2 * math.cos(phi))
    torch.testing.assert_close(d_trig, velocity, rtol=1e-13, atol=1e-13)
    # DDPM's v target (Salimans & Ho 2022) at the timestep whose sqrt(alpha_bar) is cos(phi)
    schedule = NoiseSchedule.from_name("scaled_linear", 1000)
    k = 600
    phi_k = math.acos(float(schedule.alphas_cumprod[k]) ** 0.5)
    v = get_v(x0, eps, torch.full((x0.shape[0],), k), schedule)
    torch.testing.assert_close(fm.affine_velocity(x0, eps, -math.sin(phi_k), math.cos(phi_k)), v, rtol=1e-6, atol=1e-6)


def test_conversions_recover_x0_and_eps():
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=torch.float64)
    x_t, u = fm.flow_path(x0, eps, t), fm.flow_velocity_target(x0, eps)
    torch.testing.assert_close(fm.x0_from_velocity(x_t, u, t), x0)
    torch.testing.assert_close(fm.eps_from_velocity(x_t, u, t), eps)
    torch.testing.assert_close(fm.velocity_from_eps(x_t, eps, t), u)
    torch.testing.assert_close(fm.velocity_from_x0(x_t, x0, t), u)
    assert float(fm.cfm_loss(u, x0, eps)) == 0.0


def test_logit_normal_density_is_the_derivative_of_its_distribution_function_and_the_sampler_follows_it():
    m, s = 0.3, 0.8
    normal = torch.distributions.Normal(torch.tensor(m, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64).requires_grad_(True)
    cdf = normal.cdf(torch.log(t) - torch.log1p(-t))
    (density,) = torch.autograd.grad(cdf.sum(), t)
    torch.testing.assert_close(fm.logit_normal_density(t.detach(), m, s), density, rtol=1e-12, atol=1e-12)
    draws = fm.sample_logit_normal(20000, m, s, generator=torch.Generator().manual_seed(6), dtype=torch.float64).sort().values
    empirical = torch.arange(1, 20001, dtype=torch.float64) / 20000
    theoretical = normal.cdf(torch.log(draws) - torch.log1p(-draws))
    assert float((empirical - theoretical).abs().max()) < 0.015  # Kolmogorov-Smirnov, 1% critical value 0.0115 + slack


def test_mixture_velocity_is_the_conditional_expectation_of_the_target():
    """u*(z, t) = E[eps - x0 | x_t = z], written independently per component: for x0 ~ N(mu_k, s_k^2 I),
    x_t = (1-t) x0 + t eps is Gaussian, E[x0 | x_t, k] is linear regression, and E[eps | x_t] = (x_t - (1-t) E[x0 | x_t]) / t."""
    mixture = GaussianMixture.example()
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for t in (0.1, 0.5, 0.9):
        var = (1 - t) ** 2 * mixture.stds**2 + t**2                                    # (K,)
        mean = (1 - t) * mixture.means                                                 # (K, D)
        log_p = torch.log(mixture.weights) - torch.log(var) - ((z[:, None] - mean) ** 2).sum(-1) / (2 * var)
        w = torch.softmax(log_p, dim=1)                                                # (B, K), D = 2
        gain = (1 - t) * mixture.stds**2 / var
        x0_k = mixture.means + gain[None, :, None] * (z[:, None] - mean)               # (B, K, D)
        x0_hat = (w[..., None] * x0_k).sum(1)
        eps_hat = (z - (1 - t) * x0_hat) / t
        torch.testing.assert_close(fm.mixture_velocity(mixture, z, t), eps_hat - x0_hat, rtol=1e-12, atol=1e-12)


def test_flow_euler_and_heun_converge_to_the_exact_flow_at_orders_1_and_2():
    mixture = GaussianMixture.example()
    t_start = 0.98
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * t_start

    def velocity(x, t):
        return fm.mixture_velocity(mixture, x, t / 1000)

    def run(sampler, n):
        grid = torch.cat([torch.linspace(t_start, 0, n + 1, dtype=torch.float64)])
        return sample_flow(velocity, z.clone(), n, sampler, sigmas=grid)

    reference = run("flow_heun", 4096)
    errors = {name: [float((run(name, n) - reference).norm(dim=1).mean()) for n in (16, 32, 64)]
              for name in ("flow_euler", "flow_heun")}
    slope = {name: math.log2(e[1] / e[2]) for name, e in errors.items()}
    assert 0.8 < slope["flow_euler"] < 1.3, errors
    assert slope["flow_heun"] > 1.6, errors
    assert errors["flow_heun"][2] < errors["flow_euler"][2] / 10


def test_bad_input_is_one_clear_line():
    with pytest.raises(ValueError, match="steps must be at least 1"):
        flow_sigmas(0)
    with pytest.raises(ValueError, match="unknown flow sampler 'ddim'"):
        sample_flow(_velocity_model, torch.zeros(1, 2), 4, "ddim")
    assert [s.i for s in sample_flow_euler(_velocity_model, torch.zeros(1, 2), flow_sigmas(3))] == [0, 1, 2]

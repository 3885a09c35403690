"""Samplers against closed forms: the exact Gaussian-mixture denoiser, the probability-flow ODE,
a literal transcription of CompVis's PLMS loop, and every step count from 1 to T."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from diffusion_notes.mixture import GaussianMixture, ode_reference
from diffusion_notes.sampling import SamplerSettings, Trajectory, sample
from diffusion_notes.samplers import SPACINGS, ddim_sampling_parameters, make_timesteps
from diffusion_notes.schedules import NoiseSchedule

from oracle_models import dummy_eps

SCHEDULE = NoiseSchedule.stable_diffusion()
MIXTURE = GaussianMixture.example()


def _x_T(n=128, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _error_vs_ode(sampler, steps, x_T):
    ts = make_timesteps(steps, 1000, "uniform")
    a, a_prev, _ = ddim_sampling_parameters(SCHEDULE.alphas_cumprod, ts, 0.0, False)
    reference = ode_reference(MIXTURE, x_T, float(a[-1]), float(a_prev[0]))
    x_0 = sample(MIXTURE.eps_model(SCHEDULE), x_T, SCHEDULE, sampler, steps)
    return (x_0 - reference).norm(dim=1).mean().item()


def _numpy_mixture_eps(x_bar, sigma):
    """The mixture's optimal eps written again from scratch in numpy (an oracle for the torch version)."""
    w, mu, s = (t.numpy() for t in (MIXTURE.weights, MIXTURE.means, MIXTURE.stds))
    var = s**2 + sigma**2
    diff = x_bar[:, None, :] - mu[None]
    log_w = np.log(w) - np.log(var) - (diff**2).sum(-1) / (2 * var)  # D = 2: (2 pi var)^(-D/2) ∝ 1/var
    r = np.exp(log_w - log_w.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return sigma * (r[..., None] * diff / var[None, :, None]).sum(1)


@pytest.mark.parametrize("t_start, a_end_is_one", [(981, False), (999, True)])
def test_ode_reference_agrees_with_scipy(t_start, a_end_is_one):
    """Our RK4 yardstick against scipy's adaptive DOP853 in the plain sigma variable, numpy right-hand side."""
    x_T = _x_T(4, seed=1)
    a0 = float(SCHEDULE.alphas_cumprod[t_start])
    a1 = 1.0 if a_end_is_one else float(SCHEDULE.alphas_cumprod[0])
    s0, s1 = ((1 - a0) / a0) ** 0.5, ((1 - a1) / a1) ** 0.5
    rhs = lambda s, y: _numpy_mixture_eps(y.reshape(-1, 2), s).reshape(-1)
    sol = solve_ivp(rhs, (s0, s1), (x_T / a0**0.5).reshape(-1).numpy(), method="DOP853", rtol=1e-10, atol=1e-10)
    expected = a1**0.5 * torch.tensor(sol.y[:, -1]).reshape(-1, 2)
    torch.testing.assert_close(ode_reference(MIXTURE, x_T, a0, a1), expected, rtol=0, atol=1e-6)


def test_mixture_eps_is_tweedie():
    """The closed-form eps equals -sigma * grad log p_sigma, by autograd on the mixture density."""
    x = _x_T(5, seed=2).requires_grad_(True)
    sigma = 0.4
    var = MIXTURE.stds**2 + sigma**2
    log_p = torch.logsumexp(torch.log(MIXTURE.weights) - torch.log(2 * math.pi * var) - ((x[:, None] - MIXTURE.means) ** 2).sum(-1) / (2 * var), dim=1)
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    torch.testing.assert_close(MIXTURE.eps_at_sigma(x.detach(), sigma), -sigma * grad)


def test_ddim_and_plms_converge_to_the_probability_flow_ode_at_their_orders():
    x_T = _x_T()
    err = {(s, n): _error_vs_ode(s, n, x_T) for s in ("ddim", "plms") for n in (10, 50, 100)}
    order = {s: math.log10(err[s, 10] / err[s, 100]) for s in ("ddim", "plms")}
    assert 0.6 < order["ddim"] < 1.4, f"DDIM is a first-order (Euler) solver of DDIM Eq. 14; measured {order['ddim']:.2f}"
    assert order["plms"] >= 2.0, f"PLMS should be at least second order; measured {order['plms']:.2f}"
    assert err["plms", 50] <= err["ddim", 50] / 5, err
    assert err["ddim", 100] < err["ddim", 10] and err["plms", 100] < 1e-3


def test_pndm_converges_like_plms():
    x_T = _x_T(64)
    assert _error_vs_ode("pndm", 100, x_T) < 1e-3


def test_ddpm_reproduces_the_mixture_moments():
    n = 10_000
    x_T = _x_T(n, seed=3)
    x_0 = sample(MIXTURE.eps_model(SCHEDULE), x_T, SCHEDULE, "ddpm", 1000, generator=torch.Generator().manual_seed(4))
    mean, cov = x_0.mean(0), torch.cov(x_0.T)
    true_mean, true_cov = MIXTURE.mean(), MIXTURE.covariance()
    standard_error = (torch.diagonal(true_cov) / n).sqrt()
    assert torch.all((mean - true_mean).abs() < 4 * standard_error), (mean, true_mean)
    torch.testing.assert_close(cov, true_cov, rtol=0, atol=0.03)


def _compvis_plms(model, x_T, ddim_num_steps, alphas_cumprod):
    """A literal transcription of CompVis ldm/models/diffusion/plms.py (make_schedule + plms_sampling), numpy buffers."""
    T = len(alphas_cumprod)
    c = T // ddim_num_steps
    ddim_timesteps = np.asarray(list(range(0, T, c))) + 1
    alphacums = alphas_cumprod.numpy()
    alphas = alphacums[ddim_timesteps]
    alphas_prev = np.asarray([alphacums[0]] + alphacums[ddim_timesteps[:-1]].tolist())
    sqrt_one_minus_alphas = np.sqrt(1.0 - alphas)
    time_range = np.flip(ddim_timesteps)
    total_steps = ddim_timesteps.shape[0]
    img, old_eps = x_T, []
    for i, step in enumerate(time_range):
        index = total_steps - i - 1
        ts = torch.full((x_T.shape[0],), step, dtype=torch.long)
        ts_next = torch.full((x_T.shape[0],), time_range[min(i + 1, len(time_range) - 1)], dtype=torch.long)

        def get_x_prev_and_pred_x0(e_t, index, x=img):
            a_t, a_prev = alphas[index], alphas_prev[index]
            pred_x0 = (x - sqrt_one_minus_alphas[index] * e_t) / np.sqrt(a_t)
            dir_xt = np.sqrt(1.0 - a_prev) * e_t
            return np.sqrt(a_prev) * pred_x0 + dir_xt, pred_x0

        e_t = model(img, ts)
        if len(old_eps) == 0:
            x_prev, _ = get_x_prev_and_pred_x0(e_t, index)
            e_t_prime = (e_t + model(x_prev, ts_next)) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        img, _ = get_x_prev_and_pred_x0(e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
    return img


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_plms_equals_compvis_transcription(steps):
    """Includes step counts whose CompVis 'uniform' grid has S+1 steps (7 -> 8) where diffusers differs."""
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    expected = _compvis_plms(dummy_eps, x_T, steps, SCHEDULE.alphas_cumprod)
    torch.testing.assert_close(sample(dummy_eps, x_T, SCHEDULE, "plms", steps), expected, rtol=0, atol=1e-12)


def test_every_step_count_gives_valid_timesteps_or_a_clear_error():
    T = 1000
    for spacing in SPACINGS:
        for steps in range(1, T + 1):
            try:
                ts = make_timesteps(steps, T, spacing)
            except ValueError as err:
                if spacing == "quad":  # moving CompVis's repeats up passes T - 1 only for S = T
                    assert steps == T and "past the end" in str(err), (steps, err)
                    continue
                assert spacing == "uniform" and "past the end" in str(err) and "IndexError" in str(err), (spacing, steps, err)
                continue
            assert ts.min() >= 0 and ts.max() < T and np.all(np.diff(ts) > 0), (spacing, steps)
            if spacing != "uniform":
                assert len(ts) == steps
    with pytest.raises(ValueError, match="use 500 steps"):
        make_timesteps(1000, T, "uniform")
    for bad in (0, -3, 1001, 2.5):
        with pytest.raises(ValueError, match="from 1 to 1000"):
            make_timesteps(bad, T, "leading")


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "plms", "pndm"])
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 333, 500, 999, 1000])
def test_edge_step_counts_run_or_refuse_cleanly(sampler, steps):
    x_T = torch.randn(1, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spacing = "leading" if sampler == "ddpm" else "uniform"
    try:
        make_timesteps(steps, 1000, spacing)
    except ValueError:
        with pytest.raises(ValueError, match="past the end"):
            sample(dummy_eps, x_T, SCHEDULE, sampler, steps)
        out = sample(dummy_eps, x_T, SCHEDULE, sampler, steps, spacing="trailing")  # the documented way out
    else:
        out = sample(dummy_eps, x_T, SCHEDULE, sampler, steps, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(out).all()


def test_trajectory_and_callback():
    seen = []
    x_T = _x_T(3)
    x_0, traj = sample(MIXTURE.eps_model(SCHEDULE), x_T, SCHEDULE, "ddim", 10, return_trajectory=True, callback=lambda i, t, x, p: seen.append((i, t)))
    assert isinstance(traj, Trajectory) and len(traj.x) == 11 and len(traj.pred_x0) == 10
    assert traj.x[0] is x_T and torch.equal(traj.x[-1], x_0)
    assert traj.timesteps == list(make_timesteps(10)[::-1]) == [t for _, t in seen]
    # pred_x0 moves towards the data: its last value is close to the final sample
    assert (traj.pred_x0[-1] - x_0).abs().max() < 0.05


def test_sampler_argument_errors():
    x = _x_T(2)
    with pytest.raises(ValueError, match="sampler must be one of"):
        sample(dummy_eps, x, SCHEDULE, "bogus")
    with pytest.raises(ValueError, match="eta must be >= 0"):
        sample(dummy_eps, x, SCHEDULE, "ddim", eta=-0.1)
    with pytest.raises(ValueError, match="eta applies to the ddim sampler only"):
        sample(dummy_eps, x, SCHEDULE, "plms", eta=0.5)
    with pytest.raises(ValueError, match="prediction_type"):
        sample(dummy_eps, x, SCHEDULE, "ddim", prediction_type="epsilon")
    with pytest.raises(ValueError, match="ascending"):
        SamplerSettings("ddim").grid(SCHEDULE, timesteps=[500, 100])


def test_same_generator_same_sample_different_seed_different_sample():
    x_T = _x_T(4)
    run = lambda seed: sample(dummy_eps, x_T, SCHEDULE, "ddim", 10, eta=1.0, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


def test_explicit_timesteps_equal_the_tail_of_a_full_run():
    """Image-to-image starts part-way: a truncated ascending list continues exactly like the full run would."""
    x_T = _x_T(4)
    ts = make_timesteps(20)
    _, traj = sample(dummy_eps, x_T, SamplerSettings("ddim").grid(SCHEDULE, ts), "ddim", return_trajectory=True)
    tail = sample(dummy_eps, traj.x[5], SamplerSettings("ddim").grid(SCHEDULE, ts[:-5]), "ddim")
    torch.testing.assert_close(tail, traj.x[-1], rtol=0, atol=1e-12)

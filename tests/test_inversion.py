"""DDIM inversion against diffusers' ``DDIMInverseScheduler`` (1e-6) and against the exact
probability-flow ODE of a Gaussian mixture (first-order convergence); slerp against scipy's
quaternion slerp and the norm it keeps."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler
from scipy.spatial.transform import Rotation, Slerp

from diffusion_notes.errors import SettingsError
from diffusion_notes.inversion import ddim_invert, lerp, slerp
from diffusion_notes.mixture import GaussianMixture, ode_reference
from diffusion_notes.samplers import make_timesteps
from diffusion_notes.sampling import SamplerSettings, sample
from diffusion_notes.schedules import NoiseSchedule

from oracle_models import dummy_eps

SCHEDULE = NoiseSchedule.stable_diffusion()
SD_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def inverse_oracle(**config):
    """diffusers' inverse DDIM with our float64 schedule in place of its float32 buffers."""
    sched = DDIMInverseScheduler(**{**SD_CONFIG, "clip_sample": False, **config})
    acp = SCHEDULE.alphas_cumprod.clone()
    sched.betas, sched.alphas, sched.alphas_cumprod = SCHEDULE.betas.clone(), SCHEDULE.alphas.clone(), acp
    sched.initial_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if config["set_alpha_to_one"] else acp[0]
    return sched


def x_0(seed=0):
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("spacing, steps_offset, set_alpha_to_one, steps", [
    ("leading", 1, False, 50), ("leading", 1, True, 10), ("leading", 0, True, 20), ("trailing", 0, True, 10),
    ("trailing", 0, False, 8),
])
def test_ddim_invert_equals_diffusers_inverse_scheduler(spacing, steps_offset, set_alpha_to_one, steps):
    """Step counts that divide T: diffusers finds a step's start level as ``t - T // S``, which for
    ``trailing`` with S not dividing T (S = 7: t = 142, 285, ...) is not the grid's previous timestep."""
    oracle = inverse_oracle(timestep_spacing=spacing, steps_offset=steps_offset, set_alpha_to_one=set_alpha_to_one)
    oracle.set_timesteps(steps)
    x = x_0()
    for t in oracle.timesteps:  # ascending: the model is read at the step's target timestep
        x = oracle.step(dummy_eps(x, torch.full((2,), int(t))), int(t), x).prev_sample
    grid = SamplerSettings("ddim", steps, spacing=spacing, steps_offset=steps_offset,
                           options={"set_alpha_to_one": set_alpha_to_one}).grid(SCHEDULE)
    assert np.array_equal(make_timesteps(steps, 1000, spacing, steps_offset), oracle.timesteps.numpy())
    ours = ddim_invert(dummy_eps, x_0(), grid)
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-6)
    assert (ours - x).abs().max() < 1e-12  # the same arithmetic in float64


def test_ddim_invert_v_prediction_converts_at_the_timestep_the_network_was_given():
    """A v-network is read as the ε-model eps(x, t) = sqrt(a(t)) v + sqrt(1 - a(t)) x at the timestep it was
    shown (the target level), then inverted: equal to diffusers' inverse loop on that ε-model. diffusers'
    own v_prediction branch converts with the step's *start* level instead (its ``alpha_prod_t``), a
    different approximation of the same limit: the two differ visibly at 25 steps."""
    acp = SCHEDULE.alphas_cumprod

    def v_as_eps(x, t):
        a = acp[t.long()].reshape(-1, 1, 1, 1)
        return a.sqrt() * dummy_eps(x, t) + (1 - a).sqrt() * x

    oracle = inverse_oracle(steps_offset=1, set_alpha_to_one=False)
    oracle.set_timesteps(25)
    x = x_0(1)
    for t in oracle.timesteps:
        x = oracle.step(v_as_eps(x, torch.full((2,), int(t))), int(t), x).prev_sample
    grid = SamplerSettings("ddim", 25, spacing="leading", steps_offset=1).grid(SCHEDULE)
    ours = ddim_invert(dummy_eps, x_0(1), grid, prediction_type="v")
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-6)
    diffusers_v = inverse_oracle(prediction_type="v_prediction", steps_offset=1, set_alpha_to_one=False)
    diffusers_v.set_timesteps(25)
    y = x_0(1)
    for t in diffusers_v.timesteps:
        y = diffusers_v.step(dummy_eps(y, torch.full((2,), int(t))), int(t), y).prev_sample
    assert (ours - y).abs().max() > 1e-2


def test_trajectory_runs_from_x0_to_xT_and_bad_prediction_type_is_refused():
    grid = SamplerSettings("ddim", 5, spacing="trailing").grid(SCHEDULE)
    x_T, traj = ddim_invert(dummy_eps, x_0(), grid, return_trajectory=True)
    assert len(traj.x) == 6 and traj.x[0] is not None and torch.equal(traj.x[-1], x_T)
    assert traj.timesteps == grid.timesteps[:-1].flip(0).tolist()
    with pytest.raises(SettingsError, match="prediction_type"):
        ddim_invert(dummy_eps, x_0(), grid, prediction_type="epsilon")


MIXTURE = GaussianMixture.example()


def _errors(steps_list):
    """Mean distance of DDIM inversion to the exact ODE solution, and of invert-then-sample to x_0."""
    eps = MIXTURE.eps_model(SCHEDULE)
    x0 = MIXTURE.sample(400, torch.Generator().manual_seed(0))
    inv, rec = [], []
    for steps in steps_list:
        grid = SamplerSettings("ddim", steps, spacing="trailing").grid(SCHEDULE)
        x_T = ddim_invert(eps, x0, grid)
        exact = ode_reference(MIXTURE, x0, float(grid.alphas_cumprod[-1]), float(grid.alphas_cumprod[0]), n_steps=800)
        inv.append(float((x_T - exact).norm(dim=1).mean()))
        rec.append(float((sample(eps, x_T, grid, "ddim") - x0).norm(dim=1).mean()))
    return inv, rec


def test_inversion_and_reconstruction_converge_at_first_order_on_the_exact_mixture_denoiser():
    """The probability-flow ODE is inverted exactly in the limit: both errors halve when the steps double
    (DDIM is a first-order solver), measured against an RK4 solution of the ODE (ode_reference)."""
    steps = [25, 50, 100, 200]
    inv, rec = _errors(steps)
    for errors in (inv, rec):
        orders = [math.log(errors[k] / errors[k + 1], 2) for k in range(len(steps) - 1)]
        assert all(0.85 < p < 1.2 for p in orders[1:]), (errors, orders)
    assert rec[-1] < 0.01 and inv[-1] < 0.02


def test_slerp_equals_quaternion_slerp():
    """Unit 4-vectors are quaternions: scipy's Slerp of the rotations gives our slerp up to the sign of q."""
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        q = torch.nn.functional.normalize(torch.randn(2, 4, generator=g, dtype=torch.float64), dim=1)
        if float(q[0] @ q[1]) < 0:
            q[1] = -q[1]  # scipy takes the shorter arc
        rotations = Rotation.from_quat(q.numpy())
        for alpha in (0.0, 0.25, 0.5, 0.9, 1.0):
            expected = torch.from_numpy(Slerp([0, 1], rotations)([alpha]).as_quat()[0])
            ours = slerp(q[:1], q[1:], alpha)[0]
            sign = torch.sign((ours * expected).sum())
            torch.testing.assert_close(ours, sign * expected, rtol=0, atol=1e-12)


def test_slerp_keeps_the_norm_where_lerp_shrinks_it_and_falls_back_for_parallel_vectors():
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(8, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    b = b * (a.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).reshape(-1, 1, 1, 1)  # equal norms
    for alpha in (0.1, 0.5, 0.8):
        torch.testing.assert_close(slerp(a, b, alpha).flatten(1).norm(dim=1), a.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
        cos = (a * b).flatten(1).sum(1) / a.flatten(1).norm(dim=1) ** 2
        expected = ((1 - alpha) ** 2 + alpha**2 + 2 * alpha * (1 - alpha) * cos).sqrt()
        torch.testing.assert_close(lerp(a, b, alpha).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1), expected)
    ratio = lerp(a, b, 0.5).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)
    assert (ratio - 0.5**0.5).abs().max() < 0.1  # independent Gaussians in 256 dimensions: nearly orthogonal
    torch.testing.assert_close(slerp(a, 2 * a, 0.3), lerp(a, 2 * a, 0.3))
    torch.testing.assert_close(slerp(a, b, 0.0), a) and torch.testing.assert_close(slerp(a, b, 1.0), b)

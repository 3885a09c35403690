"""The ``lcm`` sampler against diffusers' ``LCMScheduler`` loop on the same model function and the
same generator noise (float64, 1e-6), its timesteps, scalings and boundary condition."""

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler

from diffusion_notes.samplers import SAMPLERS
from diffusion_notes.samplers.lcm import consistency_function, lcm_scalings, lcm_timesteps
from diffusion_notes.sampling import SamplerSettings, sample
from diffusion_notes.schedules import NoiseSchedule

from oracle_models import dummy_eps

SCHEDULE = NoiseSchedule.stable_diffusion()
SD_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def lcm_oracle(set_alpha_to_one=True, **config):
    sched = LCMScheduler(**{**SD_CONFIG, "set_alpha_to_one": set_alpha_to_one, **config})
    acp = SCHEDULE.alphas_cumprod.clone()
    sched.betas, sched.alphas, sched.alphas_cumprod = SCHEDULE.betas.clone(), SCHEDULE.alphas.clone(), acp
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if set_alpha_to_one else acp[0]
    return sched


def x_T(seed=0):
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run_diffusers(sched, x, seed, **set_timesteps):
    sched.set_timesteps(**set_timesteps)
    generator = torch.Generator().manual_seed(seed)
    for t in sched.timesteps:
        x = sched.step(dummy_eps(x, torch.full((x.shape[0],), int(t))), int(t), x, generator=generator).prev_sample
    return x, sched.timesteps


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_timesteps_equal_diffusers(steps):
    sched = LCMScheduler(**SD_CONFIG)
    sched.set_timesteps(steps)
    assert np.array_equal(lcm_timesteps(steps)[::-1], sched.timesteps.numpy())
    sched.set_timesteps(steps, original_inference_steps=25)
    assert np.array_equal(lcm_timesteps(steps, 25)[::-1], sched.timesteps.numpy())


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
@pytest.mark.parametrize("timestep_scaling", [10.0, 3.0])
def test_lcm_on_diffusers_timesteps_equals_diffusers(steps, timestep_scaling):
    """diffusers draws its re-noising noise inside ``step`` from the generator; ours from the same seed."""
    expected, _ = run_diffusers(lcm_oracle(timestep_scaling=timestep_scaling), x_T(), 7, num_inference_steps=steps)
    grid = SamplerSettings("lcm", steps).grid(SCHEDULE, timesteps=lcm_timesteps(steps))
    ours = sample(dummy_eps, x_T(), grid, "lcm", timestep_scaling=timestep_scaling, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps, set_alpha_to_one", [(3, True), (6, False), (10, True)])
def test_lcm_on_its_default_trailing_grid_equals_diffusers_with_custom_timesteps(steps, set_alpha_to_one):
    grid = SamplerSettings("lcm", steps, options={"set_alpha_to_one": set_alpha_to_one}).grid(SCHEDULE)
    custom = [int(t) for t in grid.timesteps[:-1]]
    assert custom[0] == 999
    expected, visited = run_diffusers(lcm_oracle(set_alpha_to_one), x_T(1), 3, timesteps=custom)
    assert visited.tolist() == custom
    ours = sample(dummy_eps, x_T(1), SCHEDULE, "lcm", steps, set_alpha_to_one=set_alpha_to_one,
                  generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_scalings_equal_diffusers_and_satisfy_the_boundary_condition():
    sched = LCMScheduler(**SD_CONFIG)
    for t in (0, 1, 19, 259, 999):
        assert lcm_scalings(t) == pytest.approx(sched.get_scalings_for_boundary_condition_discrete(t), rel=1e-15)
    x, e = x_T(2), x_T(3)
    denoised, pred_x0 = consistency_function(x, e, float(SCHEDULE.alphas_cumprod[0]), 0)
    assert torch.equal(denoised, x)  # f(x, 0) = x: c_skip(0) = 1, c_out(0) = 0
    a = float(SCHEDULE.alphas_cumprod[999])
    denoised, pred_x0 = consistency_function(x, e, a, 999)
    torch.testing.assert_close(denoised, pred_x0, rtol=0, atol=1e-6)  # far from 0: f is the x0 estimate


def test_lcm_is_registered_as_a_stochastic_sampler_and_its_noise_comes_from_the_generator():
    spec = SAMPLERS["lcm"]
    assert spec.stochastic and dict(spec.options) == {"timestep_scaling": 10.0} and spec.label == "LCM"
    one = sample(dummy_eps, x_T(), SCHEDULE, "lcm", 4, generator=torch.Generator().manual_seed(0))
    again = sample(dummy_eps, x_T(), SCHEDULE, "lcm", 4, generator=torch.Generator().manual_seed(0))
    other = sample(dummy_eps, x_T(), SCHEDULE, "lcm", 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(one, again) and not torch.allclose(one, other)

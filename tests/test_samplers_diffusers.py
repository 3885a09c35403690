"""Full sampling loops against diffusers' schedulers in matched configurations, float64.

diffusers keeps its schedule in float32; the schedules themselves are compared in test_schedules.py,
so here its buffers are replaced by our float64 ones and the loops must agree to 1e-6 or better.
"""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, PNDMScheduler

from diffusion_notes.sampling import sample
from diffusion_notes.samplers import make_timesteps
from diffusion_notes.schedules import NoiseSchedule

from oracle_models import dummy_eps

SCHEDULE = NoiseSchedule.stable_diffusion()
SD_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def float64_oracle(cls, **config):
    if cls is not PNDMScheduler:  # PNDM never clips; DDIM/DDPM clip by default, Stable Diffusion does not
        config.setdefault("clip_sample", False)
    sched = cls(**{**SD_CONFIG, **config})
    acp = SCHEDULE.alphas_cumprod.clone()
    sched.betas, sched.alphas, sched.alphas_cumprod = SCHEDULE.betas.clone(), SCHEDULE.alphas.clone(), acp
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if config.get("set_alpha_to_one", True) else acp[0]
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    return sched


def x_T(seed=0):
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run_diffusers(sched, steps, x, model=dummy_eps, **step_kwargs):
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        t_batch = torch.full((x.shape[0],), int(t), dtype=torch.long)
        x = sched.step(model(x, t_batch), int(t), x, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize(
    "spacing, steps_offset, set_alpha_to_one, steps",
    [("leading", 1, False, 50), ("leading", 1, False, 7), ("leading", 0, True, 20), ("trailing", 0, True, 10), ("trailing", 0, False, 50)],
)
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_equals_diffusers(spacing, steps_offset, set_alpha_to_one, steps, eta):
    oracle = float64_oracle(DDIMScheduler, timestep_spacing=spacing, steps_offset=steps_offset, set_alpha_to_one=set_alpha_to_one)
    expected = run_diffusers(oracle, steps, x_T(), eta=eta, generator=torch.Generator().manual_seed(5))
    ours = sample(dummy_eps, x_T(), SCHEDULE, "ddim", steps, eta=eta, spacing=spacing, steps_offset=steps_offset,
                  set_alpha_to_one=set_alpha_to_one, generator=torch.Generator().manual_seed(5))
    assert np.array_equal(make_timesteps(steps, 1000, spacing, steps_offset)[::-1], oracle.timesteps.numpy())
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_ddim_v_prediction_equals_diffusers():
    oracle = float64_oracle(DDIMScheduler, prediction_type="v_prediction", steps_offset=1, set_alpha_to_one=False)
    expected = run_diffusers(oracle, 25, x_T(1))
    ours = sample(dummy_eps, x_T(1), SCHEDULE, "ddim", 25, spacing="leading", steps_offset=1, prediction_type="v")
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("spacing, steps", [("leading", 50), ("uniform", 50), ("leading", 8), ("uniform", 20)])
def test_plms_equals_pndm_with_skip_prk_steps(spacing, steps):
    """CompVis PLMS == diffusers PNDMScheduler(skip_prk_steps=True), SD's configuration (steps_offset=1)."""
    oracle = float64_oracle(PNDMScheduler, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    expected = run_diffusers(oracle, steps, x_T(2))
    ours = sample(dummy_eps, x_T(2), SCHEDULE, "plms", steps, spacing=spacing, steps_offset=1)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


# Step counts whose T // S is even: for odd T // S diffusers moves the first Runge-Kutta sub-step to
# t - (T//S)//2 but evaluates the model one timestep lower (docs/conventions.md); we use t - (T//S)//2 throughout.
@pytest.mark.parametrize("steps, set_alpha_to_one", [(10, False), (25, True), (50, False), (4, False)])
def test_pndm_with_runge_kutta_warmup_equals_diffusers(steps, set_alpha_to_one):
    oracle = float64_oracle(PNDMScheduler, skip_prk_steps=False, steps_offset=1, set_alpha_to_one=set_alpha_to_one)
    expected = run_diffusers(oracle, steps, x_T(3))
    ours = sample(dummy_eps, x_T(3), SCHEDULE, "pndm", steps, spacing="leading", steps_offset=1, set_alpha_to_one=set_alpha_to_one)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps", [1000, 50])
@pytest.mark.parametrize("variance, variance_type", [("posterior", "fixed_small"), ("beta", "fixed_large")])
def test_ddpm_equals_diffusers(steps, variance, variance_type):
    oracle = float64_oracle(DDPMScheduler, variance_type=variance_type)
    x = x_T(4)[:1, :1]
    expected = run_diffusers(oracle, steps, x, generator=torch.Generator().manual_seed(9))
    ours = sample(dummy_eps, x, SCHEDULE, "ddpm", steps, ddpm_variance=variance, generator=torch.Generator().manual_seed(9))
    assert np.array_equal(make_timesteps(steps, 1000, "leading")[::-1], oracle.timesteps.numpy())
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 3, 7, 50, 999])
def test_timestep_lists_equal_diffusers(spacing, steps):
    oracle = DDIMScheduler(**SD_CONFIG, timestep_spacing=spacing, steps_offset=0)
    oracle.set_timesteps(steps)
    assert np.array_equal(make_timesteps(steps, 1000, spacing)[::-1], oracle.timesteps.numpy())

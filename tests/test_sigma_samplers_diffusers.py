"""The σ samplers against diffusers' schedulers: same σ grid, same initial and injected noise, full loops.

diffusers runs part of its arithmetic in float32 (``sample.to(torch.float32)`` in ``step``, ``np.float32``
sigmas); here each scheduler module is made to compute in float64 instead (its ``torch.float32`` and
``np.float32`` read as float64, nothing else changed), so the loops must agree to 1e-6 (they do to ~1e-12).
The dummy model is deterministic and nonlinear in x and t. Convention differences: docs/conventions.md.
"""

import importlib

import numpy as np
import pytest
import torch
from diffusers import (DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       HeunDiscreteScheduler, LMSDiscreteScheduler, UniPCMultistepScheduler)

from diffusion_notes.guidance import rescale_guidance
from diffusion_notes.samplers import karras_sigmas
from diffusion_notes.sampling import SamplerSettings, sample
from diffusion_notes.schedules import NoiseSchedule, rescale_zero_terminal_snr

from oracle_models import dummy_eps

SCHEDULE = NoiseSchedule.stable_diffusion()
ZSNR = NoiseSchedule.stable_diffusion(zero_terminal_snr=True)
SD_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
TOLERANCE = 1e-6


class _Float64:
    """A module seen through a lens where ``float32`` is ``float64`` (torch and numpy alike)."""

    def __init__(self, module, float64):
        self._module, self._float64 = module, float64

    def __getattr__(self, name):
        return self._float64 if name == "float32" else getattr(self._module, name)


@pytest.fixture(autouse=True)
def float64_diffusers(monkeypatch):
    for cls in (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler,
                DPMSolverMultistepScheduler, UniPCMultistepScheduler):
        module = importlib.import_module(cls.__module__)
        monkeypatch.setattr(module, "torch", _Float64(torch, torch.float64))
        monkeypatch.setattr(module, "np", _Float64(np, np.float64))


def z(seed=0):
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run_diffusers(sched, steps, x_noise, model=dummy_eps, seed=None):
    """diffusers' pipeline loop: ``latents * init_noise_sigma``, ``scale_model_input``, ``step``.
    Returns the result and the first model input, which is x_T in our (variance-preserving) scale."""
    sched.set_timesteps(steps)
    x = x_noise * sched.init_noise_sigma
    x_T = sched.scale_model_input(x.clone(), sched.timesteps[0])
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    kwargs = {"generator": generator} if generator is not None else {}
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        out = model(x_in, torch.full((x.shape[0],), float(t), dtype=torch.float64))
        x = sched.step(out, t, x, **kwargs).prev_sample
    return x_T, x


def run_ours(sampler, steps, x_T, sched, schedule=SCHEDULE, seed=None, **settings):
    """Our loop from the same x_T (diffusers' init_noise_sigma * z seen through scale_model_input) and the same noise."""
    grid = SamplerSettings(sampler, steps, **settings).grid(schedule)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    prediction_type = "v" if sched.config.prediction_type == "v_prediction" else "eps"
    return grid, sample(dummy_eps, x_T, grid, settings=SamplerSettings(sampler, steps, **settings),
                        generator=generator, prediction_type=prediction_type)


def assert_same_grid(grid, sched, heun=False):
    sigmas, timesteps = sched.sigmas.double(), sched.timesteps.double()
    if heun:  # diffusers lists every interior level twice
        sigmas, timesteps = torch.cat([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]]), torch.cat([timesteps[:1], timesteps[1::2]])
    torch.testing.assert_close(grid.sigmas, sigmas, rtol=1e-12, atol=0)
    ours_t = grid.timesteps[:-1]
    if timesteps.dtype != sched.timesteps.dtype or sched.timesteps.dtype == torch.int64:
        ours_t = ours_t.round()
    torch.testing.assert_close(ours_t, timesteps, rtol=1e-10, atol=1e-10)


# (diffusers config, our settings): the spacings whose timesteps both sides define the same way
EULER_FAMILY_GRIDS = [
    (dict(timestep_spacing="leading", steps_offset=1), dict(spacing="leading", steps_offset=1), 25),
    (dict(timestep_spacing="trailing"), dict(spacing="trailing"), 25),
    (dict(timestep_spacing="linspace"), dict(spacing="linspace"), 10),  # 999/9 is an integer: no fractional t
    (dict(timestep_spacing="linspace", use_karras_sigmas=True), dict(sigma_schedule="karras"), 25),
    (dict(timestep_spacing="linspace", use_karras_sigmas=True), dict(sigma_schedule="karras"), 7),
    (dict(timestep_spacing="linspace", use_exponential_sigmas=True), dict(sigma_schedule="exponential"), 20),
]
IDS = ["leading", "trailing", "linspace", "karras25", "karras7", "exponential"]


@pytest.mark.parametrize("config, settings, steps", EULER_FAMILY_GRIDS, ids=IDS)
@pytest.mark.parametrize("sampler, cls, seed", [
    ("euler", EulerDiscreteScheduler, None), ("euler_a", EulerAncestralDiscreteScheduler, 11),
    ("heun", HeunDiscreteScheduler, None), ("lms", LMSDiscreteScheduler, None),
])
def test_euler_heun_lms_equal_diffusers(sampler, cls, seed, config, settings, steps):
    if cls is EulerAncestralDiscreteScheduler and ("use_exponential_sigmas" in config or "use_karras_sigmas" in config):
        pytest.skip("EulerAncestralDiscreteScheduler has no Karras or exponential sigmas (k-diffusion checks those)")
    sched = cls(**SD_CONFIG, **config)
    x_T, expected = run_diffusers(sched, steps, z(), seed=seed)
    grid, ours = run_ours(sampler, steps, x_T, sched, seed=seed, **settings)
    assert_same_grid(grid, sched, heun=cls is HeunDiscreteScheduler)
    torch.testing.assert_close(ours, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("sampler, cls, seed", [("euler", EulerDiscreteScheduler, None), ("euler_a", EulerAncestralDiscreteScheduler, 3)])
def test_euler_with_zero_terminal_snr_equals_diffusers(sampler, cls, seed):
    """Lin et al. 2023's rescaled schedule: diffusers replaces alphas_cumprod[-1] = 0 by 2**-24, as our grid does."""
    sched = cls(**SD_CONFIG, timestep_spacing="trailing", rescale_betas_zero_snr=True, prediction_type="v_prediction")
    x_T, expected = run_diffusers(sched, 20, z(1), seed=seed)
    grid, ours = run_ours(sampler, 20, x_T, sched, schedule=ZSNR, seed=seed, spacing="trailing")
    assert_same_grid(grid, sched)
    torch.testing.assert_close(ours, expected, rtol=0, atol=TOLERANCE)


def test_euler_v_prediction_equals_diffusers():
    sched = EulerDiscreteScheduler(**SD_CONFIG, timestep_spacing="linspace", use_karras_sigmas=True, prediction_type="v_prediction")
    x_T, expected = run_diffusers(sched, 15, z(2))
    _, ours = run_ours("euler", 15, x_T, sched, sigma_schedule="karras")
    torch.testing.assert_close(ours, expected, rtol=0, atol=TOLERANCE)


# DPM-Solver and UniPC: diffusers' own "leading"/"linspace" differ from every other scheduler's (they space
# S + 1 points and drop one); "trailing" is shared. Their Karras sigmas span the trained range (as ours)
# and their timesteps are rounded: our quantize=True.
MULTISTEP_GRIDS = [
    (dict(timestep_spacing="trailing"), dict(spacing="trailing"), 25),
    (dict(timestep_spacing="trailing"), dict(spacing="trailing"), 8),
    (dict(use_karras_sigmas=True), dict(sigma_schedule="karras", quantize=True), 25),
    (dict(use_karras_sigmas=True), dict(sigma_schedule="karras", quantize=True), 10),
    (dict(timestep_spacing="trailing", rescale_betas_zero_snr=True, prediction_type="v_prediction"), dict(spacing="trailing"), 20),
]
MULTISTEP_IDS = ["trailing25", "trailing8", "karras25", "karras10", "zero_snr_v"]


@pytest.mark.parametrize("config, settings, steps", MULTISTEP_GRIDS, ids=MULTISTEP_IDS)
@pytest.mark.parametrize("sampler, cls, extra, seed", [
    ("dpmpp_2m", DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=2), None),
    ("dpmpp_2m_sde", DPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver++", solver_order=2), 7),
    ("unipc", UniPCMultistepScheduler, dict(), None),
    ("unipc_order3", UniPCMultistepScheduler, dict(solver_order=3), None),
])
def test_dpmpp_and_unipc_equal_diffusers(sampler, cls, extra, seed, config, settings, steps):
    sched = cls(**SD_CONFIG, **extra, **config)
    schedule = ZSNR if config.get("rescale_betas_zero_snr") else SCHEDULE
    x_T, expected = run_diffusers(sched, steps, z(3), seed=seed)
    if sampler == "unipc_order3":
        sampler, settings = "unipc", {**settings, "options": {"order": 3}}
    grid, ours = run_ours(sampler, steps, x_T, sched, schedule=schedule, seed=seed, **settings)
    assert_same_grid(grid, sched)
    torch.testing.assert_close(ours, expected, rtol=0, atol=TOLERANCE)


def test_unipc_diffusers_defaults_are_ours():
    sched = UniPCMultistepScheduler()
    assert (sched.config.solver_order, sched.config.solver_type, sched.config.predict_x0, sched.config.lower_order_final) == (2, "bh2", True, True)


@pytest.mark.parametrize("rho, steps", [(7.0, 10), (7.0, 1), (3.0, 25)])
def test_karras_sigmas_equal_diffusers(rho, steps):
    sched = EulerDiscreteScheduler(**SD_CONFIG)
    in_sigmas = torch.tensor([14.6146, 0.0292], dtype=torch.float64)
    expected = torch.as_tensor(sched._convert_to_karras(in_sigmas=in_sigmas, num_inference_steps=steps) if rho == 7.0 else
                               _karras_formula(0.0292, 14.6146, steps, rho))
    torch.testing.assert_close(karras_sigmas(0.0292, 14.6146, steps, rho), expected.double(), rtol=1e-12, atol=0)


def _karras_formula(sigma_min, sigma_max, n, rho):
    """Karras et al. 2022 Eq. 5 written out: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    i = np.arange(n)
    return (sigma_max ** (1 / rho) + i / max(n - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def test_zero_terminal_snr_rescale_equals_diffusers():
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as theirs

    betas = SCHEDULE.betas.clone()
    ours = rescale_zero_terminal_snr(betas)
    torch.testing.assert_close(ours, theirs(betas.clone()), rtol=1e-12, atol=1e-14)
    assert ours[-1] == 1 and ZSNR.alphas_cumprod[-1] == 0 and ZSNR.snr[-1] == 0
    torch.testing.assert_close(ZSNR.alphas_cumprod[0], SCHEDULE.alphas_cumprod[0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_guidance_rescale_equals_diffusers(phi):
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    e_t, e_cfg = z(4), 3 * z(5) + 0.2
    torch.testing.assert_close(rescale_guidance(e_cfg, e_t, phi), rescale_noise_cfg(e_cfg, e_t, phi), rtol=1e-12, atol=1e-12)
    rescaled = rescale_guidance(e_cfg, e_t, 1.0)  # phi = 1: exactly the conditional prediction's std (Eq. 15)
    torch.testing.assert_close(rescaled.std(dim=(1, 2, 3)), e_t.std(dim=(1, 2, 3)), rtol=1e-12, atol=0)

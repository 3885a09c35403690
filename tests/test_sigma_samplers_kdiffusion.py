"""The σ samplers against k-diffusion (Crowson), the code AUTOMATIC1111 runs: the only oracle for DPM++ 2S a,
and a second one for the others.

k-diffusion's own ``DiscreteEpsDDPMDenoiser`` turns the ε-model into a denoiser on real σ (its
``sigma_to_t`` interpolation and ``get_scalings``), so the σ -> t map is checked too; its samplers run on our
grid's σ (checked against its ``get_sigmas_karras``) with the same noise, in float64.
"""

import pytest
import torch

from diffusion_notes.noise import randn
from diffusion_notes.sampling import SamplerSettings, sample
from diffusion_notes.schedules import NoiseSchedule

from oracle_models import dummy_eps

try:
    import kdiffusion_oracle

    K_SAMPLING, K_EXTERNAL = kdiffusion_oracle.load()
except ImportError as err:  # pragma: no cover - the dev extra installs it
    pytest.skip(f"k-diffusion's sampling.py cannot be imported: {err}", allow_module_level=True)

SCHEDULE = NoiseSchedule.stable_diffusion()
K_FUNCTIONS = {
    "euler": ("sample_euler", False), "euler_a": ("sample_euler_ancestral", True), "heun": ("sample_heun", False),
    "lms": ("sample_lms", False), "dpmpp_2m": ("sample_dpmpp_2m", False), "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", True),
    "dpmpp_2s_a": ("sample_dpmpp_2s_ancestral", True),
}


def x_T(seed=0):
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run_k_diffusion(sampler, grid, x, seed, quantize=False, **options):
    denoiser = K_EXTERNAL.DiscreteEpsDDPMDenoiser(dummy_eps, SCHEDULE.alphas_cumprod, quantize=quantize)
    name, stochastic = K_FUNCTIONS[sampler]
    kwargs = dict(options)
    if stochastic:
        generator = torch.Generator().manual_seed(seed)
        kwargs["noise_sampler"] = lambda sigma, sigma_next: randn(x.shape, generator, x.device, x.dtype)
    x_bar_T = x * (1 + grid.sigmas[0] ** 2) ** 0.5  # k-diffusion starts from x = noise * sigma_max ... in x-bar
    return getattr(K_SAMPLING, name)(denoiser, x_bar_T, grid.sigmas, disable=True, **kwargs)


@pytest.mark.parametrize("sampler", list(K_FUNCTIONS))
@pytest.mark.parametrize("schedule, steps", [("karras", 12), ("default", 20), ("exponential", 9)])
def test_sigma_samplers_equal_k_diffusion(sampler, schedule, steps):
    settings = SamplerSettings(sampler, steps, schedule)
    grid = settings.grid(SCHEDULE)
    expected = run_k_diffusion(sampler, grid, x_T(), seed=5)
    ours = sample(dummy_eps, x_T(), SCHEDULE, settings=settings, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)  # sigma_N = 0: x_0 = x-bar_0


@pytest.mark.parametrize("sampler, options", [("dpmpp_2s_a", dict(eta=0.5, s_noise=0.9)), ("euler_a", dict(eta=0.3)),
                                              ("dpmpp_2m_sde", dict(eta=0.6, s_noise=1.1))])
def test_ancestral_options_equal_k_diffusion(sampler, options):
    settings = SamplerSettings(sampler, 15, "karras", options=options)
    grid = settings.grid(SCHEDULE)
    expected = run_k_diffusion(sampler, grid, x_T(1), seed=2, **options)
    ours = sample(dummy_eps, x_T(1), SCHEDULE, settings=settings, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_quantize_equals_k_diffusion_quantized_denoiser():
    settings = SamplerSettings("dpmpp_2s_a", 10, "karras", quantize=True)
    grid = settings.grid(SCHEDULE)
    expected = run_k_diffusion("dpmpp_2s_a", grid, x_T(2), seed=3, quantize=True)
    ours = sample(dummy_eps, x_T(2), SCHEDULE, settings=settings, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 10, 50])
def test_karras_and_exponential_grids_equal_k_diffusion(steps):
    denoiser = K_EXTERNAL.DiscreteEpsDDPMDenoiser(dummy_eps, SCHEDULE.alphas_cumprod, quantize=False)
    s_min, s_max = float(denoiser.sigma_min), float(denoiser.sigma_max)
    for name, k_sigmas in (("karras", K_SAMPLING.get_sigmas_karras(steps, s_min, s_max)),
                           ("exponential", K_SAMPLING.get_sigmas_exponential(steps, s_min, s_max))):
        grid = SamplerSettings("euler", steps, name).grid(SCHEDULE)
        torch.testing.assert_close(grid.sigmas, k_sigmas.double(), rtol=1e-5, atol=0)  # k-diffusion builds them in float32
        torch.testing.assert_close(grid.timesteps[:-1], denoiser.sigma_to_t(grid.sigmas[:-1]), rtol=0, atol=1e-9)

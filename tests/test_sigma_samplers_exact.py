"""The σ samplers on data whose exact answer is known: the Gaussian mixture's closed-form denoiser.

With no training error left, the distance to the exact probability-flow ODE solution
(``mixture.ode_reference``, RK4 in sqrt(sigma), checked against scipy in test_sampling.py) is each
sampler's own discretisation error; its slope against the number of model evaluations is the
sampler's order. Karras grids (rho = 7), 128 points, N = 16 and 64 steps.

The grids stop at sigma_min = sigma(t=0) for the order measurement: every sampler ends a run to
sigma = 0 with a first-order step over [sigma_min, 0] (the denoised value itself), whose error does not
shrink with N, so on the full run the higher-order samplers flatten out at that step's error
(test_ending_at_sigma_zero_costs_the_higher_order_samplers_their_order measures it).
"""

import math

import pytest
import torch

from diffusion_notes.mixture import GaussianMixture, ode_reference
from diffusion_notes.samplers import SamplingGrid, build_grid
from diffusion_notes.sampling import sample
from diffusion_notes.schedules import NoiseSchedule

SCHEDULE = NoiseSchedule.stable_diffusion()
MIXTURE = GaussianMixture.example()
X_T = torch.randn(128, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

#: measured (N = 16 -> 64, against model evaluations; error 16 -> 64 steps): euler 1.03 (4.5e-2 -> 1.1e-2),
#: ddim 1.03 (DDIM is Euler in sigma: the same numbers), heun 2.08 (8.3e-3 -> 4.7e-4 at 32 -> 128 calls),
#: dpmpp_2m 2.04 (1.1e-2 -> 6.3e-4), unipc 2.21 (2.7e-3 -> 1.3e-4), lms 2.97 (6.8e-3 -> 1.1e-4),
#: plms 2.51 (4.2e-3 -> 1.5e-4); pndm 3.14 only because its warm-up's 12 calls weigh less at 64 steps (not banded).
ORDER_BANDS = {
    "euler": (0.9, 1.15), "ddim": (0.9, 1.15), "heun": (1.85, 2.3), "dpmpp_2m": (1.85, 2.3),
    "unipc": (1.9, 3.2), "lms": (2.5, 4.2), "plms": (2.2, 4.2),
}


def karras_grid_to_sigma_min(n: int) -> SamplingGrid:
    """N Karras steps from sigma_max to sigma_min (the N + 1 Karras levels, without the jump to 0)."""
    g = build_grid(SCHEDULE, n + 1, sigma_schedule="karras", set_alpha_to_one=True)
    return SamplingGrid(g.timesteps[:-1], g.alphas_cumprod[:-1], g.sigmas[:-1], g.train_alphas_cumprod)


def run(sampler, grid):
    calls = [0]
    eps = MIXTURE.eps_model(SCHEDULE)

    def counted(x, t):
        calls[0] += 1
        return eps(x, t)

    return sample(counted, X_T, grid, sampler), calls[0]


@pytest.fixture(scope="module")
def references():
    g = karras_grid_to_sigma_min(8)
    a_start, a_min = float(g.alphas_cumprod[0]), float(g.alphas_cumprod[-1])
    return {"min": ode_reference(MIXTURE, X_T, a_start, a_min), "zero": ode_reference(MIXTURE, X_T, a_start, 1.0)}


def error(x, reference):
    return (x - reference).norm(dim=1).mean().item()


@pytest.mark.parametrize("sampler", list(ORDER_BANDS))
def test_measured_order_against_model_evaluations(sampler, references):
    (x16, n16), (x64, n64) = run(sampler, karras_grid_to_sigma_min(16)), run(sampler, karras_grid_to_sigma_min(64))
    e16, e64 = error(x16, references["min"]), error(x64, references["min"])
    order = math.log(e16 / e64) / math.log(n64 / n16)
    low, high = ORDER_BANDS[sampler]
    assert low <= order <= high, f"{sampler}: error {e16:.2e} ({n16} calls) -> {e64:.2e} ({n64} calls), order {order:.2f}"


def test_at_equal_model_evaluations_the_second_order_samplers_win(references):
    """About 64 model calls each: Euler 64 steps, Heun 32 steps (2 calls each), the multistep ones 64 steps."""
    e = {s: error(run(s, karras_grid_to_sigma_min(n))[0], references["min"])
         for s, n in [("euler", 64), ("heun", 32), ("dpmpp_2m", 64), ("unipc", 64), ("lms", 64)]}
    for s in ("heun", "dpmpp_2m", "unipc", "lms"):
        assert e[s] < e["euler"] / 5, e
    assert e["dpmpp_2m"] < e["heun"], e  # one call per step buys DPM++ 2M twice the steps of Heun


def test_ending_at_sigma_zero_costs_the_higher_order_samplers_their_order(references):
    """To sigma = 0 the last step is first order over a fixed interval: the error stops shrinking, at the
    size of one denoising step from the exact solution at sigma_min, D(x_bar(sigma_min); sigma_min) - x(0)."""
    g = karras_grid_to_sigma_min(8)
    sigma_min, a_min = float(g.sigmas[-1]), float(g.alphas_cumprod[-1])
    x_bar_min = references["min"] / a_min**0.5
    last_step_error = error(x_bar_min - sigma_min * MIXTURE.eps_at_sigma(x_bar_min, sigma_min), references["zero"])
    for sampler in ("heun", "dpmpp_2m", "unipc"):
        e32, e64 = (error(run(sampler, build_grid(SCHEDULE, n, sigma_schedule="karras", set_alpha_to_one=True))[0],
                          references["zero"]) for n in (32, 64))
        assert e64 > e32 / 1.5, (sampler, e32, e64)  # no longer converging (a 2nd-order method would gain 4x)
        assert 0.5 * last_step_error < e64 < 2 * last_step_error, (sampler, e64, last_step_error)
    e_euler = [error(run("euler", build_grid(SCHEDULE, n, sigma_schedule="karras", set_alpha_to_one=True))[0], references["zero"]) for n in (16, 64)]
    assert e_euler[1] < e_euler[0] / 3  # first-order anyway: Euler still converges


@pytest.mark.parametrize("sampler, steps, schedule", [("euler_a", 100, "default"), ("dpmpp_2m_sde", 50, "karras"),
                                                      ("dpmpp_2s_a", 50, "karras")])
def test_stochastic_samplers_reproduce_the_mixture_moments(sampler, steps, schedule):
    """As test_sampling.py's DDPM test: mean within 4 standard errors, covariance within 0.03 (n = 10000)."""
    n = 10_000
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_0 = sample(MIXTURE.eps_model(SCHEDULE), x_T, SCHEDULE, sampler, steps, sigma_schedule=schedule,
                 generator=torch.Generator().manual_seed(4))
    mean, cov = x_0.mean(0), torch.cov(x_0.T)
    true_mean, true_cov = MIXTURE.mean(), MIXTURE.covariance()
    standard_error = (torch.diagonal(true_cov) / n).sqrt()
    assert torch.all((mean - true_mean).abs() < 4 * standard_error), (mean, true_mean)
    torch.testing.assert_close(cov, true_cov, rtol=0, atol=0.03)

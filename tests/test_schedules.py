"""Beta schedules and NoiseSchedule buffers against diffusers and closed forms."""

import math
import warnings

import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_notes.schedules import COMPVIS_NAMES, NoiseSchedule, make_beta_schedule

SD = dict(linear_start=0.00085, linear_end=0.012)


@pytest.mark.parametrize(
    "ours, theirs, kwargs",
    [
        ("linear", "linear", {}),
        ("scaled_linear", "scaled_linear", SD),
        ("linear", "linear", dict(linear_start=2e-4, linear_end=3e-2)),
        ("cosine", "squaredcos_cap_v2", {}),
    ],
)
def test_betas_and_alphas_cumprod_equal_diffusers(ours, theirs, kwargs):
    betas = make_beta_schedule(ours, 1000, **kwargs)
    oracle = DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs, beta_start=kwargs.get("linear_start", 1e-4), beta_end=kwargs.get("linear_end", 2e-2))
    # diffusers computes in float32: agreement is to float32 precision.
    torch.testing.assert_close(betas, oracle.betas.double(), rtol=2e-6, atol=1e-9)
    acp = NoiseSchedule.from_betas(betas).alphas_cumprod
    torch.testing.assert_close(acp, oracle.alphas_cumprod.double(), rtol=2e-5, atol=1e-7)


def test_stable_diffusion_schedule_is_compvis_linear():
    compvis = make_beta_schedule("linear", 1000, naming="compvis", **SD)
    # CompVis ldm/modules/diffusionmodules/util.py: linspace of square roots, squared.
    expected = torch.linspace(SD["linear_start"] ** 0.5, SD["linear_end"] ** 0.5, 1000, dtype=torch.float64) ** 2
    assert torch.equal(compvis, expected)
    assert torch.equal(NoiseSchedule.stable_diffusion().betas, expected)


def test_compvis_sqrt_linear_is_plain_linear_and_paper_naming_refuses_it():
    assert torch.equal(make_beta_schedule("sqrt_linear", 50, naming="compvis"), make_beta_schedule("linear", 50))
    with pytest.raises(ValueError, match="naming='compvis'"):
        make_beta_schedule("sqrt_linear", 50)
    assert set(COMPVIS_NAMES) == {"linear", "sqrt_linear", "cosine", "sqrt"}


def test_linear_with_sd_values_warns_about_the_naming_trap():
    with pytest.warns(UserWarning, match="scaled_linear"):
        make_beta_schedule("linear", 1000, **SD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_beta_schedule("linear", 1000, naming="compvis", **SD)
        make_beta_schedule("scaled_linear", 1000, **SD)


def test_cosine_against_its_formula():
    T, s = 1000, 8e-3
    betas = make_beta_schedule("cosine", T, cosine_s=s)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    for t in [0, 1, 10, 500, 900]:
        expected = min(1 - f(t + 1) / f(t), 0.999)
        assert betas[t].item() == pytest.approx(expected, rel=1e-12)
    assert betas.max().item() == pytest.approx(0.999)  # the clip is active at the end
    acp = NoiseSchedule.from_betas(betas).alphas_cumprod
    assert acp[300].item() == pytest.approx(f(301) / f(0), rel=1e-9)  # no clipping before the very end


def test_sqrt_schedule():
    assert torch.allclose(make_beta_schedule("sqrt", 10, linear_start=1e-4, linear_end=1e-2) ** 2, torch.linspace(1e-4, 1e-2, 10, dtype=torch.float64))


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine", "sqrt"])
def test_buffers_closed_forms(name):
    s = NoiseSchedule.from_name(name, 200, linear_start=1e-3, linear_end=5e-2)
    acp, b = s.alphas_cumprod, s.betas
    assert s.betas.dtype == torch.float64
    assert torch.all(acp[1:] < acp[:-1]), "alphas_cumprod must decrease"
    assert torch.allclose(acp, torch.tensor([math.prod(1 - beta for beta in b[: k + 1].tolist()) for k in range(200)], dtype=torch.float64), rtol=1e-12)
    assert s.alphas_cumprod_prev[0] == 1 and torch.equal(s.alphas_cumprod_prev[1:], acp[:-1])
    assert torch.allclose(s.sqrt_alphas_cumprod**2, acp)
    assert torch.allclose(s.sqrt_one_minus_alphas_cumprod**2, 1 - acp)
    assert torch.allclose(torch.exp(s.log_one_minus_alphas_cumprod), 1 - acp)
    assert torch.allclose(s.sqrt_recip_alphas_cumprod * s.sqrt_alphas_cumprod, torch.ones_like(acp))
    assert torch.allclose(s.sqrt_recipm1_alphas_cumprod**2, 1 / acp - 1)
    assert torch.allclose(s.snr, acp / (1 - acp))
    assert s.posterior_variance[0] == 0 and s.posterior_log_variance_clipped[0] == math.log(1e-20)
    assert torch.all(s.posterior_variance <= b + 1e-15), "posterior variance is at most beta (DDPM Sec. 3.2)"


def test_from_betas_rejects_nonsense():
    for bad in ([], [0.0, 0.1], [1.0, 0.5], [0.5, 1.0, 0.5], [0.5, 1.5], [[-0.1]]):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            NoiseSchedule.from_betas(bad)
    # only the last beta may be 1: a zero-terminal-SNR schedule (Lin et al. 2023), alphas_cumprod[T-1] = 0
    assert NoiseSchedule.from_betas([0.5, 1.0]).alphas_cumprod.tolist() == [0.5, 0.0]
    with pytest.raises(ValueError, match="unknown paper beta schedule"):
        make_beta_schedule("quadratic")
    with pytest.raises(ValueError, match="naming"):
        make_beta_schedule("linear", naming="ldm")


def test_schedule_is_frozen_and_movable():
    s = NoiseSchedule.from_name("linear", 10)
    with pytest.raises(Exception):
        s.betas = torch.zeros(10)
    assert s.to(dtype=torch.float32).alphas_cumprod.dtype == torch.float32
    assert s.num_timesteps == 10

"""EDM's preconditioning, loss weight and stochastic sampler (Karras et al. 2022, Table 1 and Alg. 2) against
diffusers' EDMEulerScheduler, k-diffusion's sample_heun with churn, and the unit-variance property they are designed for."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_notes import edm
from diffusion_notes.mixture import GaussianMixture

try:
    import kdiffusion_oracle

    K_SAMPLING, K_ERROR = kdiffusion_oracle.load()[0], None
except ImportError as err:  # pragma: no cover - the dev extra installs it
    K_SAMPLING, K_ERROR = None, err


def test_preconditioning_equals_diffusers_edm_euler():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.EDMEulerScheduler(sigma_data=0.5, prediction_type="epsilon")
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    for sigma in (0.002, 0.3, 1.0, 80.0):
        c_skip, c_out, c_in, c_noise = edm.preconditioning(sigma)
        s = torch.tensor(sigma, dtype=torch.float64)
        torch.testing.assert_close(c_in * x, scheduler.precondition_inputs(x, s), rtol=1e-12, atol=0)
        torch.testing.assert_close(c_noise, scheduler.precondition_noise(s), rtol=1e-12, atol=0)
        torch.testing.assert_close(c_skip * x + c_out * out, scheduler.precondition_outputs(x, out, s), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 5.0])
def test_network_input_and_target_have_unit_variance_for_data_of_std_sigma_data(sigma):
    g = torch.Generator().manual_seed(1)
    x0 = edm.SIGMA_DATA * torch.randn(400000, generator=g, dtype=torch.float64)
    x = x0 + sigma * torch.randn(400000, generator=g, dtype=torch.float64)
    c_skip, c_out, c_in, _ = edm.preconditioning(sigma)
    assert float((c_in * x).var()) == pytest.approx(1.0, rel=0.01)
    assert float(((x0 - c_skip * x) / c_out).var()) == pytest.approx(1.0, rel=0.01)
    assert float(edm.loss_weight(sigma)) == pytest.approx(float(1 / c_out**2), rel=1e-12)


def test_weighted_loss_is_the_networks_unweighted_loss_on_its_target():
    """lambda(sigma) |D - x0|^2 = |F - (x0 - c_skip x) / c_out|^2: the weight equalises the loss across sigma."""
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(1, generator=g, dtype=torch.float64)

    def network(x_in, c_noise):
        return torch.tanh(x_in * weight + c_noise.reshape(-1, 1, 1, 1))

    x0 = torch.randn(5, 1, 3, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sigma = edm.sample_training_sigmas(5, generator=g).double()
    loss = edm.edm_loss(edm.preconditioned_denoiser(network), x0, sigma, noise)
    c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1, 1) for c in edm.preconditioning(sigma))
    x = x0 + sigma.reshape(-1, 1, 1, 1) * noise
    target = (x0 - c_skip * x) / c_out
    expected = ((network(c_in * x, c_noise.reshape(-1)) - target) ** 2).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)


def test_training_sigmas_are_log_normal():
    s = edm.sample_training_sigmas(200000, generator=torch.Generator().manual_seed(3)).double().log()
    assert float(s.mean()) == pytest.approx(edm.P_MEAN, abs=0.01) and float(s.std()) == pytest.approx(edm.P_STD, abs=0.01)


@pytest.mark.parametrize("churn", [(0.0, 0.0, math.inf), (30.0, 0.0, math.inf), (40.0, 0.05, 1.0)])
def test_algorithm_2_equals_k_diffusion_sample_heun_with_churn(churn):
    if K_SAMPLING is None:
        pytest.skip(f"k-diffusion's sampling.py cannot be imported: {K_ERROR}")
    sampling = K_SAMPLING
    s_churn, s_tmin, s_tmax = churn
    mixture = GaussianMixture.example()

    def denoiser(x, sigma):                               # the mixture's exact D(x; sigma) = x - sigma eps*
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        return x - s[:, None] * mixture.eps_at_sigma(x, s)

    sigmas = sampling.get_sigmas_karras(12, 0.02, 20.0, device="cpu").double()
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 20.0
    torch.manual_seed(5)
    expected = sampling.sample_heun(lambda x, s: denoiser(x, s), x_T.clone(), sigmas, disable=True,
                                    s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=1.003)
    torch.manual_seed(5)
    ours = edm.sample_edm(denoiser, x_T.clone(), sigmas, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=1.003)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    if s_churn:
        torch.manual_seed(5)
        assert not torch.allclose(edm.sample_edm(denoiser, x_T.clone(), sigmas), expected)   # churn changed the run

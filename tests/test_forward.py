"""The forward process: moments of q_sample, the posterior as a product of Gaussians, the conversions."""

import pytest
import torch

from diffusion_notes.forward import (
    get_v,
    predict_eps_from_z_and_v,
    predict_noise_from_start,
    predict_start_from_noise,
    predict_start_from_z_and_v,
    q_posterior_mean_variance,
    q_sample,
)
from diffusion_notes.losses import p_losses, training_target
from diffusion_notes.schedules import NoiseSchedule

S = NoiseSchedule.stable_diffusion()


def test_q_sample_moments():
    """x_t | x0 ~ N(sqrt(abar) x0, (1 - abar) I): DDPM Eq. 4, checked by sampling."""
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    for t_int in [0, 250, 999]:
        t = torch.full((n,), t_int)
        x_t = q_sample(x0, t, torch.randn(n, 1, generator=g, dtype=torch.float64), S)
        abar = S.alphas_cumprod[t_int].item()
        se = (1 - abar) ** 0.5 / n**0.5
        assert abs(x_t.mean().item() - abar**0.5 * 0.7) < 5 * se
        assert x_t.var().item() == pytest.approx(1 - abar, rel=0.02)


def test_one_jump_equals_the_chain_in_distribution():
    """Composing q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) t times gives Eq. 4's moments."""
    s = NoiseSchedule.from_name("linear", 100, linear_start=1e-3, linear_end=0.05)
    g = torch.Generator().manual_seed(1)
    x = torch.full((100_000,), 1.5, dtype=torch.float64)
    for t in range(60):
        x = (1 - s.betas[t]).sqrt() * x + s.betas[t].sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float64)
    abar = s.alphas_cumprod[59].item()
    assert x.mean().item() == pytest.approx(abar**0.5 * 1.5, abs=0.01)
    assert x.var().item() == pytest.approx(1 - abar, rel=0.02)


def test_posterior_is_the_product_of_gaussians():
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): multiply the two Gaussians in x_{t-1} independently."""
    x0 = torch.tensor([[0.3], [-1.2]], dtype=torch.float64)
    x_t = torch.tensor([[0.9], [0.1]], dtype=torch.float64)
    for t_int in [1, 10, 500, 999]:
        t = torch.full((2,), t_int)
        beta, abar_prev = S.betas[t_int].item(), S.alphas_cumprod[t_int - 1].item()
        # likelihood in x_{t-1}: N(x_t; sqrt(1-beta) x_{t-1}, beta) -> precision (1-beta)/beta, mean x_t/sqrt(1-beta)
        prec_1, mean_1 = (1 - beta) / beta, x_t / (1 - beta) ** 0.5
        prec_2, mean_2 = 1 / (1 - abar_prev), abar_prev**0.5 * x0
        var = 1 / (prec_1 + prec_2)
        mean = var * (prec_1 * mean_1 + prec_2 * mean_2)
        mu, v, logv = q_posterior_mean_variance(x0, x_t, t, S)
        torch.testing.assert_close(mu, mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(v, torch.full_like(v, var), rtol=1e-10, atol=0)
        torch.testing.assert_close(logv, torch.log(v))


@pytest.mark.parametrize("t_int", [0, 1, 400, 999])
def test_conversions_invert_each_other(t_int):
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([t_int, t_int])
    x_t = q_sample(x0, t, eps, S)
    torch.testing.assert_close(predict_start_from_noise(x_t, t, eps, S), x0)
    torch.testing.assert_close(predict_noise_from_start(x_t, t, x0, S), eps)
    v = get_v(x0, eps, t, S)
    a = S.alphas_cumprod[t_int]
    torch.testing.assert_close(v, a.sqrt() * eps - (1 - a).sqrt() * x0)  # Salimans & Ho's definition
    torch.testing.assert_close(predict_start_from_z_and_v(x_t, t, v, S), x0)
    torch.testing.assert_close(predict_eps_from_z_and_v(x_t, t, v, S), eps)


def test_per_sample_timesteps_broadcast():
    x0 = torch.ones(3, 2, dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    out = q_sample(x0, t, torch.zeros_like(x0), S)
    torch.testing.assert_close(out[:, 0], S.sqrt_alphas_cumprod[t])


def test_training_targets_and_loss():
    x0 = torch.randn(4, 2, dtype=torch.float64)
    eps = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([3, 30, 300, 900])
    assert training_target(x0, eps, t, S, "eps") is eps
    assert training_target(x0, eps, t, S, "x0") is x0
    torch.testing.assert_close(training_target(x0, eps, t, S, "v"), get_v(x0, eps, t, S))
    with pytest.raises(ValueError):
        training_target(x0, eps, t, S, "score")
    # a perfect eps-predictor has zero loss; one that predicts 0 has loss E[eps^2]
    perfect = lambda x_t, t_: predict_noise_from_start(x_t, t_, x0, S)
    assert p_losses(perfect, x0, t, S, noise=eps).item() < 1e-20
    assert p_losses(lambda x_t, t_: torch.zeros_like(x_t), x0, t, S, noise=eps).item() == pytest.approx((eps**2).mean().item())

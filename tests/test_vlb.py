"""The variational bound term by term (DDPM Eq. 5, 12, 13) against independent references: torch.distributions'
KL divergence, numerical integration of the Gaussian over each bin (scipy), the exact denoiser of a single point,
and DDPM Eq. 12's weighted noise error derived separately."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_notes import vlb
from diffusion_notes.forward import q_sample
from diffusion_notes.schedules import NoiseSchedule

scipy_integrate = pytest.importorskip("scipy.integrate")


def test_gaussian_kl_equals_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (lv1 / 2).exp()), torch.distributions.Normal(m2, (lv2 / 2).exp()))
    torch.testing.assert_close(vlb.gaussian_kl(m1, lv1, m2, lv2), expected, rtol=1e-12, atol=1e-14)


def test_discretized_gaussian_equals_the_integral_over_each_bin_and_sums_to_one():
    from scipy.stats import norm

    levels = torch.linspace(-1, 1, 17, dtype=torch.float64)          # the digits' 17 grey levels
    width = 2 / 16
    for mean, std in ((0.1, 0.3), (-0.95, 0.05), (0.7, 1.5)):
        got = vlb.discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean), torch.full_like(levels, math.log(std)), width)
        for k, x in enumerate(levels.tolist()):
            lo = -math.inf if k == 0 else x - width / 2
            hi = math.inf if k == len(levels) - 1 else x + width / 2
            integral, _ = scipy_integrate.quad(lambda y: norm.pdf(y, mean, std), lo, hi, epsabs=0.0, epsrel=1e-12, limit=200)
            assert float(got[k]) == pytest.approx(math.log(integral), rel=1e-7, abs=1e-9)
        assert float(got.exp().sum()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_each_kl_term_is_a_weighted_noise_error(variance):
    """DDPM Eq. 12: L_{t-1} = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)) |eps - eps_theta|^2 + C_t, with
    C_t = D/2 (bt/s2 - 1 - log(bt/s2)) (bt = posterior variance, s2 = sigma_t^2): zero when sigma_t^2 = bt."""
    schedule = NoiseSchedule.from_name("linear", 1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(6, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    e_theta = noise + 0.3 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    s2 = vlb.reverse_variance(schedule, variance)
    for index in (1, 10, 500, 999):
        t = torch.full((6,), index)
        x_t = q_sample(x0, t, noise, schedule.to(dtype=torch.float64))
        got = vlb.kl_term(x0, x_t, t, e_theta, schedule, variance)
        ratio = float(schedule.posterior_variance[index]) / float(s2[index])
        constant = 64 / 2 * (ratio - 1 - math.log(ratio))
        expected = float(vlb.eps_weight(schedule, variance)[index]) * ((noise - e_theta) ** 2).flatten(1).sum(1) + constant
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_the_exact_denoiser_of_one_point_makes_every_kl_term_vanish():
    """Data = one image x*: the optimal eps is (x_t - sqrt(abar) x*) / sqrt(1 - abar), the model's reverse step equals the
    forward posterior, and with sigma_t^2 = posterior variance every L_{t-1} is 0; what is left is L_T + L_0."""
    schedule = NoiseSchedule.from_name("linear", 200)
    x_star = (torch.randint(0, 17, (1, 1, 4, 4), generator=torch.Generator().manual_seed(2)).double() / 8 - 1)
    abar = schedule.alphas_cumprod.double()

    def exact_eps(x_t, t):
        a = abar[t].reshape(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x_star) / (1 - a).sqrt()

    bound = vlb.variational_bound(exact_eps, x_star.repeat(3, 1, 1, 1), schedule, 2 / 16, generator=torch.Generator().manual_seed(3))
    assert float(bound.kl.abs().max()) < 1e-8
    torch.testing.assert_close(bound.total, bound.prior + bound.decoder)
    # the decoder's mean is x* itself, its std sqrt(posterior_variance[1]) is far below half a bin: L_0 ~ 0
    assert float(bound.decoder.max()) < 1e-6
    assert float(bound.prior[0]) == pytest.approx(float(vlb.prior_term(x_star, schedule)[0]))


def test_bits_per_dim_and_bad_variance():
    assert float(vlb.bits_per_dim(torch.tensor(64 * math.log(2.0)), 64)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="variance must be one of"):
        vlb.reverse_variance(NoiseSchedule.from_name("linear", 10), "learned")


def test_learned_range_variance_equals_diffusers():
    diffusers = pytest.importorskip("diffusers")
    schedule = NoiseSchedule.from_name("linear", 1000)
    scheduler = diffusers.DDPMScheduler(beta_schedule="linear", variance_type="learned_range")
    g = torch.Generator().manual_seed(5)
    for t in (1, 2, 10, 500, 999):
        v = torch.rand(3, 1, 2, 2, generator=g) * 2 - 1
        # diffusers returns the log-variance for "learned_range" (its step takes exp(0.5 * it) as the std)
        log_expected = scheduler._get_variance(t, predicted_variance=v, variance_type="learned_range")
        torch.testing.assert_close(torch.log(vlb.learned_range_variance(v, t, schedule)).float(), log_expected, rtol=1e-4, atol=1e-6)  # diffusers: float32 buffers
    # the ends of the range are the two fixed choices
    assert float(vlb.learned_range_variance(torch.tensor(-1.0), 10, schedule)) == pytest.approx(float(schedule.posterior_variance[10]))
    assert float(vlb.learned_range_variance(torch.tensor(1.0), 10, schedule)) == pytest.approx(float(schedule.betas[10]))

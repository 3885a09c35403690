"""The ideal denoiser of a finite set against a brute-force posterior (each training image's Gaussian density,
torch.distributions), and the memorisation it implies: DDIM with it returns training images."""

from __future__ import annotations

import torch

from diffusion_notes.ideal_denoiser import ideal_eps_model, ideal_x0
from diffusion_notes.sampling import sample
from diffusion_notes.schedules import NoiseSchedule


def test_posterior_mean_equals_bayes_rule_by_brute_force():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(7, 1, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    x_t = torch.randn(5, 1, 3, 3, generator=g, dtype=torch.float64)
    for abar in (0.999, 0.5, 0.01):
        log_p = torch.stack([torch.distributions.MultivariateNormal(abar**0.5 * x.flatten(), (1 - abar) * torch.eye(9, dtype=torch.float64)).log_prob(x_t.flatten(1))
                             for x in train], dim=1)                                   # (B, N): log q(x_t | x_i)
        posterior = torch.softmax(log_p, dim=1)                                         # uniform prior over the N images
        expected = (posterior @ train.flatten(1)).reshape(x_t.shape)
        torch.testing.assert_close(ideal_x0(x_t, torch.full((5,), abar, dtype=torch.float64), train), expected, rtol=1e-10, atol=1e-12)


def test_sampling_with_the_ideal_denoiser_returns_training_images():
    schedule = NoiseSchedule.from_name("linear", 1000)
    train = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    x_T = torch.randn(30, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = sample(ideal_eps_model(train, schedule), x_T, schedule, "ddim", 50)     # ends at abar_0 = 0.9999
    spacing = float(torch.cdist(train.flatten(1), train.flatten(1)).fill_diagonal_(float("inf")).min())
    nearest = torch.cdist(out.flatten(1), train.flatten(1)).min(1)
    assert float(nearest.values.max()) < 0.05 * spacing          # the last sample still holds sqrt(1 - abar_0) of noise
    # its denoised value is a training image, to rounding, and the samples copy several different ones
    denoised = ideal_x0(out, schedule.alphas_cumprod[0], train)
    assert float(torch.cdist(denoised.flatten(1), train.flatten(1)).min(1).values.max()) < 1e-6 * spacing
    assert len(set(nearest.indices.tolist())) >= 10

"""Classifier guidance and loss guidance against closed forms on Gaussian mixtures (float64).

For a mixture whose components are the classes, :math:`p(k \\mid x_t)` is exact and the class-conditional
distribution is the k-th component alone, whose noise prediction is a closed form:
:math:`\\epsilon_k = \\sigma(\\bar x - \\mu_k)/(s_k^2 + \\sigma^2)`. Classifier guidance with scale s must give
:math:`\\epsilon + s(\\epsilon_k - \\epsilon)` to float64 rounding."""

import pytest
import torch

from diffusion_notes.gradient_guidance import classifier_guidance, classifier_guided_eps_model, loss_guided_eps_model
from diffusion_notes.mixture import GaussianMixture
from diffusion_notes.sampling import sample
from diffusion_notes.schedules import NoiseSchedule

SCHEDULE = NoiseSchedule.stable_diffusion()
MIXTURE = GaussianMixture.example()


def log_p_class(k: int, mixture: GaussianMixture = MIXTURE):
    r"""Exact :math:`\log p(k \mid x_t)` by Bayes' rule on :math:`q(x_t \mid k) = \mathcal N(\sqrt{\bar\alpha}\mu_k, (\bar\alpha s_k^2 + 1 - \bar\alpha) I)`,
    written in :math:`x_t` (not in :math:`\bar x`, as mixture.py is) with torch.distributions."""

    def log_prob(x, t):
        a = SCHEDULE.alphas_cumprod[t.long()].to(x.dtype)[:, None]  # integer timesteps in these tests
        logs = []
        for j in range(len(mixture.weights)):
            var = a * mixture.stds[j] ** 2 + 1 - a
            normal = torch.distributions.Normal(a.sqrt() * mixture.means[j], var.sqrt())
            logs.append(torch.log(mixture.weights[j]) + normal.log_prob(x).sum(1))
        logs = torch.stack(logs, 1)
        return logs[:, k] - torch.logsumexp(logs, 1)

    return log_prob


def component_eps(k: int, x, t, mixture: GaussianMixture = MIXTURE):
    """The noise prediction of the k-th component alone (a single Gaussian): sigma (x_bar - mu_k) / (s_k^2 + sigma^2)."""
    a = SCHEDULE.alphas_cumprod[t.long()].to(x.dtype)[:, None]
    sigma = ((1 - a) / a).sqrt()
    return sigma * (x / a.sqrt() - mixture.means[k]) / (mixture.stds[k] ** 2 + sigma**2)


def x_t(n=64, seed=0):
    return 1.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("k", [0, 1, 2])
@pytest.mark.parametrize("scale", [1.0, 0.5, 3.0])
def test_classifier_guided_eps_is_the_closed_form_on_the_mixture(k, scale):
    eps = MIXTURE.eps_model(SCHEDULE)
    guided = classifier_guided_eps_model(eps, log_p_class(k), scale, SCHEDULE)
    x = x_t()
    for t in (1, 20, 250, 600, 999):
        tt = torch.full((x.shape[0],), float(t), dtype=torch.float64)
        e = eps(x, tt)
        expected = e + scale * (component_eps(k, x, tt) - e)
        torch.testing.assert_close(guided(x, tt), expected, rtol=1e-12, atol=1e-12)


def test_guidance_works_under_no_grad_and_scale_zero_is_the_model():
    eps = MIXTURE.eps_model(SCHEDULE)
    x, tt = x_t(8), torch.full((8,), 300.0, dtype=torch.float64)
    with torch.no_grad():
        out = classifier_guided_eps_model(eps, log_p_class(1), 2.0, SCHEDULE)(x, tt)
    torch.testing.assert_close(out, eps(x, tt) + 2.0 * (component_eps(1, x, tt) - eps(x, tt)), rtol=1e-12, atol=1e-12)
    assert torch.equal(classifier_guided_eps_model(eps, log_p_class(1), 0.0, SCHEDULE)(x, tt), eps(x, tt))
    assert torch.equal(classifier_guidance(eps(x, tt), x, 0.36, 2.0), eps(x, tt) - 2.0 * 0.8 * x)


def test_guided_ddim_samples_the_chosen_component():
    """Scale 1 with exact ε and exact classifier: the guided DDIM run is the run on the k-th component alone."""
    k = 2
    guided = classifier_guided_eps_model(MIXTURE.eps_model(SCHEDULE), log_p_class(k), 1.0, SCHEDULE)
    alone = GaussianMixture(torch.ones(1, dtype=torch.float64), MIXTURE.means[k:k + 1], MIXTURE.stds[k:k + 1])
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x0 = sample(guided, x_T, SCHEDULE, "ddim", 50)
    torch.testing.assert_close(x0, sample(alone.eps_model(SCHEDULE), x_T, SCHEDULE, "ddim", 50), rtol=1e-9, atol=1e-9)
    assert (torch.cdist(x0, MIXTURE.means).argmin(1) == k).all()


def test_loss_guidance_equals_the_gradient_through_x0_hat_of_a_single_gaussian():
    r"""One component N(mu, s^2 I): x0_hat = (s^2 x_bar + sigma^2 mu)/(s^2 + sigma^2) is affine in x_t, so for
    L = |x0_hat - target|^2 / 2 the gradient is s^2/((s^2 + sigma^2) sqrt(a)) (x0_hat - target)."""
    single = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.tensor([[0.3, -0.4]], dtype=torch.float64),
                             torch.tensor([0.6], dtype=torch.float64))
    target = torch.tensor([1.0, 2.0], dtype=torch.float64)
    eps = single.eps_model(SCHEDULE)
    guided = loss_guided_eps_model(eps, lambda x0: 0.5 * ((x0 - target) ** 2).sum(1), 2.5, SCHEDULE)
    x = x_t(16, 3)
    for t in (5, 100, 500, 990):
        tt = torch.full((16,), float(t), dtype=torch.float64)
        a = SCHEDULE.alphas_cumprod[t]
        sigma2, s2 = (1 - a) / a, single.stds[0] ** 2
        x0_hat = (s2 * x / a.sqrt() + sigma2 * single.means[0]) / (s2 + sigma2)
        grad = s2 / ((s2 + sigma2) * a.sqrt()) * (x0_hat - target)
        torch.testing.assert_close(guided(x, tt), eps(x, tt) + 2.5 * (1 - a).sqrt() * grad, rtol=1e-12, atol=1e-12)
        timed = loss_guided_eps_model(eps, lambda x0: 0.5 * ((x0 - target) ** 2).sum(1), lambda a_t: 3.0 * a_t, SCHEDULE)
        torch.testing.assert_close(timed(x, tt), eps(x, tt) + 3.0 * a * (1 - a).sqrt() * grad, rtol=1e-12, atol=1e-12)

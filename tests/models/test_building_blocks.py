"""Single formulas of the models, each against an independent computation."""

from __future__ import annotations

import math

import torch

from diffusion_notes.models import DiagonalGaussianDistribution, VectorQuantizer, size_embedding, timestep_embedding


def test_timestep_embedding_is_cos_then_sin_of_transformer_frequencies():
    t = torch.tensor([0.0, 1.0, 981.0])
    emb = timestep_embedding(t, 8)
    for row, step in zip(emb, t.tolist()):
        freqs = [10000 ** (-i / 4) for i in range(4)]  # Vaswani et al. 2017, Sec. 3.5
        expected = [math.cos(step * f) for f in freqs] + [math.sin(step * f) for f in freqs]
        assert torch.allclose(row, torch.tensor(expected), atol=1e-4)


def test_timestep_embedding_matches_diffusers_flip_sin_to_cos():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.arange(0, 1000, 37)
    expected = get_timestep_embedding(t, 320, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert torch.allclose(timestep_embedding(t, 320), expected, atol=1e-5)


def test_size_embedding_concatenates_six_embeddings():
    ids = torch.tensor([[1024.0, 768.0, 0.0, 16.0, 1024.0, 768.0]])
    emb = size_embedding(ids, 256)
    assert emb.shape == (1, 6 * 256)
    assert torch.equal(emb[0, 3 * 256 : 4 * 256], timestep_embedding(torch.tensor([16.0]), 256)[0])


def test_diagonal_gaussian_kl_and_sample_statistics():
    torch.manual_seed(0)
    mean, logvar = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3) * 0.5
    posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=[1, 2, 3])
    assert torch.allclose(posterior.kl(), expected, atol=1e-5)
    assert torch.equal(posterior.mode(), mean)
    draws = torch.stack([posterior.sample(torch.Generator().manual_seed(i)) for i in range(2000)])
    assert torch.allclose(draws.mean(0), mean, atol=0.15)
    assert torch.allclose(draws.std(0), posterior.std, rtol=0.1)


def test_vector_quantizer_picks_the_nearest_codebook_entry():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_e=5, e_dim=3)
    z = torch.randn(2, 3, 4, 4)
    z_q, _, indices = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    brute = ((flat[:, None, :] - vq.embedding.weight[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(indices.flatten(), brute)
    assert torch.allclose(z_q.permute(0, 2, 3, 1).reshape(-1, 3), vq.embedding.weight[brute])


def test_straight_through_gradient_reaches_the_encoder_unchanged():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_e=5, e_dim=3)
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    z_q, _, _ = vq(z)
    upstream = torch.randn_like(z_q)
    (z_q * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)  # dz_q/dz = I (van den Oord et al. 2017, Sec. 3.2)
    assert vq.embedding.weight.grad is None or torch.count_nonzero(vq.embedding.weight.grad) == 0


def test_codebook_loss_moves_only_the_codebook_and_commitment_only_the_encoder():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_e=5, e_dim=3, beta=0.25)
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    _, loss, indices = vq(z)
    loss.backward()
    e = vq.embedding.weight.detach()[indices.flatten()].reshape(2, 4, 4, 3).permute(0, 3, 1, 2)
    n = z.numel()
    # d/dz of beta * ||z - sg[e]||^2 / n: the encoder feels only the commitment term.
    assert torch.allclose(z.grad, 0.25 * 2 * (z.detach() - e) / n, atol=1e-6)
    # d/de_k of ||sg[z] - e_k||^2 / n summed over the vectors assigned to k: only the codebook term.
    expected = torch.zeros_like(vq.embedding.weight)
    expected.index_add_(0, indices.flatten(), 2 * (e - z.detach()).permute(0, 2, 3, 1).reshape(-1, 3) / n)
    assert torch.allclose(vq.embedding.weight.grad, expected, atol=1e-6)


def test_upcast_attention_computes_in_float32_and_returns_the_input_dtype(monkeypatch):
    import torch.nn.functional as F

    from diffusion_notes.models import CrossAttention

    seen = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v: seen.append(q.dtype) or sdpa(q, k, v))
    x, context = torch.randn(1, 16, 64), torch.randn(1, 77, 32)
    for upcast, inner in ((True, torch.float32), (False, torch.bfloat16)):
        attention = CrossAttention(64, 32, heads=1, dim_head=64, upcast_attention=upcast).to(torch.bfloat16)
        out = attention(x.bfloat16(), context.bfloat16())
        assert seen.pop() == inner and out.dtype == torch.bfloat16

"""Independent oracles for rows of docs/formulas.md whose other tests restate the code: diffusers'
own implementations of SNR, sigma, the v target and x0 from v, and the attention / GEGLU formulas
written out directly (no SDPA, no chunk of the library's).

Where diffusers computes from its float32 ``alphas_cumprod``, the oracle is given our float64
buffer instead, so the comparison checks the formula (to 1e-12), not float32 round-off (except
``compute_snr``, which returns float32).
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_notes.forward import get_v, predict_start_from_z_and_v
from diffusion_notes.models.attention import GEGLU, CrossAttention
from diffusion_notes.schedules import NoiseSchedule

F64 = torch.float64


def _sd_scheduler(cls, **kwargs):
    return cls(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, **kwargs)


def test_snr_equals_diffusers_compute_snr():
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    schedule = NoiseSchedule.stable_diffusion()
    oracle = _sd_scheduler(DDPMScheduler)
    oracle.alphas_cumprod = schedule.alphas_cumprod.clone()
    t = torch.tensor([0, 1, 10, 250, 500, 999])
    # compute_snr returns float32 (it casts its sqrt(abar) factors with .float())
    torch.testing.assert_close(schedule.snr[t], compute_snr(oracle, t).double(), rtol=1e-6, atol=0)


def test_sigmas_equal_euler_discrete_scheduler():
    from diffusers import EulerDiscreteScheduler

    theirs = _sd_scheduler(EulerDiscreteScheduler).sigmas  # float32, T..1 then a final 0
    assert float(theirs[-1]) == 0.0
    # float32 round-off in 1 - abar near t = 0 (abar = 0.99915) limits the agreement to ~4e-5 relative
    torch.testing.assert_close(NoiseSchedule.stable_diffusion().sigmas, theirs[:-1].flip(0).double(), rtol=1e-4, atol=0)


def _x0_noise_t():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, 5, generator=g, dtype=F64)
    noise = torch.randn(4, 3, 5, 5, generator=g, dtype=F64)
    return x0, noise, torch.tensor([0, 37, 500, 999])


def test_v_target_equals_diffusers_get_velocity():
    from diffusers import DDPMScheduler

    schedule = NoiseSchedule.stable_diffusion()
    oracle = _sd_scheduler(DDPMScheduler)
    oracle.alphas_cumprod = schedule.alphas_cumprod.clone()
    x0, noise, t = _x0_noise_t()
    torch.testing.assert_close(get_v(x0, noise, t, schedule), oracle.get_velocity(x0, noise, t), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t", [981, 501, 1])
def test_x0_from_v_equals_ddim_v_prediction_pred_original_sample(t):
    from diffusers import DDIMScheduler

    schedule = NoiseSchedule.stable_diffusion()
    oracle = _sd_scheduler(DDIMScheduler, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    oracle.set_timesteps(50)
    oracle.alphas_cumprod = schedule.alphas_cumprod.clone()
    g = torch.Generator().manual_seed(t)
    x_t = torch.randn(2, 4, 3, 3, generator=g, dtype=F64)
    v = torch.randn(2, 4, 3, 3, generator=g, dtype=F64)
    theirs = oracle.step(v, t, x_t).pred_original_sample
    ours = predict_start_from_z_and_v(x_t, torch.full((2,), t), v, schedule)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_cross_attention_is_softmax_of_scaled_dot_products():
    """LDM Eq. 3, written out: softmax(Q K^T / sqrt(d)) V per head, heads concatenated, then W_out."""
    torch.manual_seed(0)
    heads, d = 2, 4
    attention = CrossAttention(query_dim=6, context_dim=5, heads=heads, dim_head=d).to(F64)
    x = torch.randn(3, 7, 6, dtype=F64)  # (batch, image tokens, channels)
    context = torch.randn(3, 11, 5, dtype=F64)  # (batch, prompt tokens, context channels)
    Q = x @ attention.to_q.weight.T
    K = context @ attention.to_k.weight.T
    V = context @ attention.to_v.weight.T
    outs = []
    for h in range(heads):
        q, k, v = (M[..., h * d:(h + 1) * d] for M in (Q, K, V))
        logits = q @ k.transpose(1, 2) / math.sqrt(d)
        weights = logits.exp() / logits.exp().sum(-1, keepdim=True)
        outs.append(weights @ v)
    expected = torch.cat(outs, -1) @ attention.to_out[0].weight.T + attention.to_out[0].bias
    torch.testing.assert_close(attention(x, context), expected, rtol=1e-10, atol=1e-12)
    # without a context it is self-attention: keys and values from x itself
    self_attention = CrossAttention(query_dim=6, heads=heads, dim_head=d).to(F64)
    torch.testing.assert_close(self_attention(x), self_attention(x, x), rtol=0, atol=0)


def test_geglu_is_the_product_of_a_linear_map_and_a_gelu_gate():
    """Shazeer 2020: GEGLU(x) = (x W + b) * GELU(x V + c), with GELU(u) = u Phi(u) (the exact, erf form)."""
    torch.manual_seed(0)
    geglu = GEGLU(6, 4).to(F64)
    x = torch.randn(2, 3, 6, dtype=F64)
    W, V = geglu.proj.weight[:4], geglu.proj.weight[4:]
    b, c = geglu.proj.bias[:4], geglu.proj.bias[4:]
    gate = x @ V.T + c
    gelu = gate * 0.5 * (1 + torch.erf(gate / math.sqrt(2)))
    torch.testing.assert_close(geglu(x), (x @ W.T + b) * gelu, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t", [999, 500])
def test_clipped_x0_in_ddpm_step_equals_diffusers_clip_sample(t):
    """DDPM with clip_denoised: x0_hat clipped to [-1, 1] before the posterior mean (diffusers clip_sample=True)."""
    from diffusers import DDPMScheduler

    from diffusion_notes.samplers import ddpm_step

    schedule = NoiseSchedule.stable_diffusion()
    oracle = _sd_scheduler(DDPMScheduler, clip_sample=True, clip_sample_range=1.0)
    oracle.betas, oracle.alphas, oracle.alphas_cumprod = schedule.betas.clone(), schedule.alphas.clone(), schedule.alphas_cumprod.clone()
    oracle.one = torch.tensor(1.0, dtype=F64)
    oracle.set_timesteps(1000)
    g = torch.Generator().manual_seed(t)
    x_t = 3 * torch.randn(2, 3, 4, 4, generator=g, dtype=F64)
    e_t = torch.randn(2, 3, 4, 4, generator=g, dtype=F64)
    theirs = oracle.step(e_t, t, x_t, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    a = schedule.alphas_cumprod
    x_prev, pred_x0 = ddpm_step(x_t, e_t, float(a[t]), float(a[t - 1]), noise, clip_denoised=True)
    assert pred_x0.abs().max() == 1.0  # the clip is active in these cases
    torch.testing.assert_close(pred_x0, theirs.pred_original_sample, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x_prev, theirs.prev_sample, rtol=1e-10, atol=1e-10)


def test_vae_attention_block_is_single_head_softmax_attention_over_positions():
    """CompVis AttnBlock written out: h = GroupNorm(x); w = softmax(q^T k / sqrt(C)) over the h*w positions;
    x + proj_out(v w^T)."""
    from diffusion_notes.models.vae import AttnBlock

    torch.manual_seed(0)
    block = AttnBlock(32).to(F64)
    x = torch.randn(2, 32, 3, 5, dtype=F64)
    b, c, h, w = x.shape
    hn = torch.nn.functional.group_norm(x, 32, block.norm.weight, block.norm.bias, eps=1e-6).reshape(b, c, h * w)

    def conv(layer, z):  # a 1x1 convolution is a matrix product over channels
        return layer.weight[:, :, 0, 0] @ z + layer.bias[:, None]

    q, k, v = conv(block.q, hn), conv(block.k, hn), conv(block.v, hn)
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # (b, hw_query, hw_key)
    out = (v @ weights.transpose(1, 2)).reshape(b, c, h, w)
    expected = x + conv(block.proj_out, out.reshape(b, c, h * w)).reshape(b, c, h, w)
    torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-12)


def test_vae_log_variance_is_clamped_to_minus_30_and_20():
    from diffusion_notes.models.vae import DiagonalGaussianDistribution

    logvar = torch.tensor([-100.0, -30.0, 0.0, 20.0, 100.0], dtype=F64).reshape(1, 5, 1, 1)
    q = DiagonalGaussianDistribution(torch.cat([torch.zeros_like(logvar), logvar], dim=1))
    expected = torch.tensor([-30.0, -30.0, 0.0, 20.0, 20.0], dtype=F64).reshape(1, 5, 1, 1)
    torch.testing.assert_close(q.logvar, expected)
    torch.testing.assert_close(q.std, torch.exp(expected / 2))


def test_image_and_mask_conversions_equal_diffusers_image_processor():
    import numpy as np
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image

    from diffusion_notes.images import array_to_pil, mask_to_tensor, pil_to_tensor, tensor_to_array

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    torch.testing.assert_close(pil_to_tensor(image), VaeImageProcessor(vae_scale_factor=8).preprocess(image))
    mask = Image.fromarray(rng.integers(0, 256, (16, 24), dtype=np.uint8))
    processor = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    torch.testing.assert_close(mask_to_tensor(mask), processor.preprocess(mask))
    decoded = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2  # beyond [-1, 1]
    theirs = VaeImageProcessor().postprocess(decoded, output_type="np")
    np.testing.assert_allclose(tensor_to_array(decoded), theirs, atol=1e-7)
    assert np.array_equal(np.asarray(array_to_pil(theirs)[0]), np.asarray(VaeImageProcessor.numpy_to_pil(theirs)[0]))

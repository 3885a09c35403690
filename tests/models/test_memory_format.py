"""The SpatialTransformer hands back the memory layout it was given (NCHW, or channels-last on CUDA).

Its ``b (h w) c -> b c h w`` reshape is a channels-last view; left so, every following convolution
of an NCHW model converted its weight (docs/benchmarks.md). Checked with diffusers' output as oracle."""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.models.attention import SpatialTransformer


@pytest.mark.parametrize("use_linear", [False, True])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_spatial_transformer_keeps_the_input_memory_format(use_linear, memory_format):
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    torch.manual_seed(0)
    theirs = Transformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=32, norm_num_groups=32,
                                cross_attention_dim=24, use_linear_projection=use_linear).eval()
    ours = SpatialTransformer(32, 2, 16, 1, 24, use_linear=use_linear).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 32, 5, 6).contiguous(memory_format=memory_format)
    context = torch.randn(2, 7, 24)
    with torch.no_grad():
        out = ours(x, context)
        expected = theirs(x, encoder_hidden_states=context).sample
    assert out.is_contiguous(memory_format=memory_format)
    assert (out - expected).abs().max() < 1e-5

"""Captured cross-attention maps: diffusers' attention probabilities as the oracle, and the map the layer really used."""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.attention_maps import attention_probabilities, capture_cross_attention, cross_attention_layers
from diffusion_notes.models.attention import CrossAttention
from diffusion_notes.models.config import UNetConfig
from diffusion_notes.models.unet import UNetModel

diffusers_attention = pytest.importorskip("diffusers.models.attention_processor")


def _tiny_unet(seed: int = 0) -> UNetModel:
    torch.manual_seed(seed)
    config = UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                        transformer_depth=(1, 1), transformer_depth_middle=1, context_dim=16, num_heads=2,
                        num_head_channels=-1, use_linear_in_transformer=False, adm_in_channels=None,
                        addition_time_embed_dim=256, upcast_attention=False)
    unet = UNetModel(config).eval()
    for p in unet.parameters():  # CompVis zero-initialises the outputs of some layers: make every path carry signal
        torch.nn.init.normal_(p, std=0.2)
    return unet


@pytest.mark.parametrize("upcast", [False, True])
def test_probabilities_equal_diffusers_attention_scores(upcast):
    """diffusers' ``Attention.get_attention_scores`` (the ``attention_probs`` of its ``AttnProcessor``), same weights."""
    torch.manual_seed(0)
    ours = CrossAttention(query_dim=24, context_dim=12, heads=3, dim_head=8, upcast_attention=upcast).double()
    theirs = diffusers_attention.Attention(query_dim=24, cross_attention_dim=12, heads=3, dim_head=8, bias=False,
                                           upcast_attention=upcast, upcast_softmax=upcast).double()
    theirs.load_state_dict(ours.state_dict())
    x, context = torch.randn(2, 5, 24, dtype=torch.float64), torch.randn(2, 77, 12, dtype=torch.float64)
    with torch.no_grad():
        expected = theirs.get_attention_scores(theirs.head_to_batch_dim(theirs.to_q(x)),
                                               theirs.head_to_batch_dim(theirs.to_k(context)))  # (B * heads, N, M)
        got = attention_probabilities(ours, x, context)
    assert got.shape == (2, 3, 5, 77)
    # upcast: both compute QK^T and the softmax in float32 (diffusers then casts back to the input's dtype)
    tolerance = {"rtol": 1e-6, "atol": 1e-7} if upcast else {"rtol": 1e-12, "atol": 1e-14}
    torch.testing.assert_close(got.reshape(6, 5, 77).to(expected.dtype), expected, **tolerance)
    torch.testing.assert_close(got.sum(-1).double(), torch.ones(2, 3, 5, dtype=torch.float64), **tolerance)


def test_captured_maps_are_the_weights_the_layer_applied():
    """P @ V, recombined and projected, gives each layer's own output (computed by scaled_dot_product_attention)."""
    unet = _tiny_unet().double()
    layers = cross_attention_layers(unet)
    assert len(layers) == 7  # input blocks 1 and 3, the middle block, output blocks 0-3
    seen = {}

    def remember(name):
        def hook(layer, args, output):
            seen[name] = (args, output)  # returns None: the output is left as it is
        return hook

    handles = [layer.register_forward_hook(remember(name)) for name, layer in layers.items()]
    x, t, context = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.tensor([10.0, 900.0], dtype=torch.float64), \
        torch.randn(2, 77, 16, dtype=torch.float64)
    with torch.no_grad(), capture_cross_attention(unet) as maps:
        unet(x, t, context)
    for handle in handles:
        handle.remove()
    for name, layer in layers.items():
        (x_in, context_in), output = seen[name]
        (probs,) = maps[name]
        assert probs.shape == (2, layer.heads, x_in.shape[1], 77)
        v = layer.to_v(context_in).reshape(2, 77, layer.heads, -1).transpose(1, 2)
        rebuilt = layer.to_out((probs.double() @ v).transpose(1, 2).flatten(2))
        torch.testing.assert_close(rebuilt, output, rtol=1e-5, atol=1e-6)  # probs are stored in float32


def test_capture_leaves_the_model_unchanged():
    """Same output with and without the capture, no hooks left afterwards, one map per layer per UNet call."""
    unet = _tiny_unet(seed=1)
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([5.0, 500.0]), torch.randn(2, 77, 16)
    with torch.no_grad():
        before = unet(x, t, context)
        with capture_cross_attention(unet, average_heads=True) as maps:
            during = [unet(x, t, context) for _ in range(3)]
        after = unet(x, t, context)
    assert all(torch.equal(before, out) for out in [*during, after])
    assert all(not layer._forward_hooks for layer in cross_attention_layers(unet).values())
    assert all(len(calls) == 3 and calls[0].shape[:1] == (2,) and calls[0].shape[-1] == 77 and calls[0].dim() == 3
               for calls in maps.values())

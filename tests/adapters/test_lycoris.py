"""LoHa and LoKr merged by this package vs LyCORIS's own ``functional.loha.diff_weight`` /
``functional.lokr.diff_weight`` (lycoris-lora 4.1.3), on a Linear and a 3x3 convolution of the tiny SD 1.x UNet."""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.stable_diffusion import StableDiffusion

lycoris = pytest.importorskip("lycoris.functional")

LINEAR = ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
          "unet.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", (32, 64))
CONV = ("lora_unet_mid_block_resnets_0_conv1", "unet.middle_block.0.in_layers.2.weight", (64, 64, 3, 3))


def loaded(tiny):
    return StableDiffusion.from_pretrained(tiny("sd1")[0], torch_dtype=torch.float32)


@pytest.mark.parametrize("name, key, shape", [LINEAR, CONV])
def test_loha_equals_lycoris_diff_weight(tiny, name, key, shape):
    from lycoris.functional import loha

    sd = loaded(tiny)
    g = torch.Generator().manual_seed(0)
    rank, alpha, out, inp = 4, 3.0, shape[0], shape[1]
    kernel = shape[2:]
    w1a, w2a = (torch.randn(out, rank, generator=g) * 0.3 for _ in range(2))
    w1b, w2b = (torch.randn(rank, inp, *kernel, generator=g) * 0.3 for _ in range(2))
    state = {f"{name}.hada_w1_a": w1a, f"{name}.hada_w1_b": w1b.flatten(1), f"{name}.hada_w2_a": w2a,
             f"{name}.hada_w2_b": w2b.flatten(1), f"{name}.alpha": torch.tensor(alpha)}
    before = sd.state_dict()[key].clone()
    sd.load_lora(state, scale=0.7)
    theirs = loha.diff_weight(w1b, w1a, w2b, w2a, None, None, gamma=0.7 * alpha / rank, backend="torch")
    torch.testing.assert_close(sd.state_dict()[key] - before, theirs.reshape(shape), rtol=1e-5, atol=1e-6)
    assert theirs.abs().max() > 1e-2


@pytest.mark.parametrize("factored", ["w1", "w2", "none"])
@pytest.mark.parametrize("name, key, shape", [LINEAR, CONV])
def test_lokr_equals_lycoris_diff_weight(tiny, name, key, shape, factored):
    from lycoris.functional import lokr

    sd = loaded(tiny)
    g = torch.Generator().manual_seed(1)
    rank, alpha = 2, 5.0
    out, inp, *kernel = shape
    (o1, o2), (i1, i2) = (4, out // 4), (8, inp // 8)
    parts = dict(w1=None, w1a=None, w1b=None, w2=None, w2a=None, w2b=None)
    if factored == "w1":
        parts.update(w1a=torch.randn(o1, rank, generator=g), w1b=torch.randn(rank, i1, generator=g),
                     w2=torch.randn(o2, i2, *kernel, generator=g) * 0.1)
    elif factored == "w2":
        parts.update(w1=torch.randn(o1, i1, generator=g), w2a=torch.randn(o2, rank, generator=g) * 0.1,
                     w2b=torch.randn(rank, i2, *kernel, generator=g) * 0.1)
    else:
        parts.update(w1=torch.randn(o1, i1, generator=g), w2=torch.randn(o2, i2, *kernel, generator=g) * 0.1)
    keys = dict(w1="lokr_w1", w1a="lokr_w1_a", w1b="lokr_w1_b", w2="lokr_w2", w2a="lokr_w2_a", w2b="lokr_w2_b")
    state = {f"{name}.{keys[k]}": v for k, v in parts.items() if v is not None}
    state[f"{name}.alpha"] = torch.tensor(alpha)
    before = sd.state_dict()[key].clone()
    sd.load_lora(state, scale=0.5)
    theirs = 0.5 * lokr.diff_weight(*parts.values(), None, gamma=torch.tensor(alpha), backend="torch")
    torch.testing.assert_close(sd.state_dict()[key] - before, theirs.reshape(shape), rtol=1e-5, atol=1e-6)

"""The LoRA merge on its own: the formula per layer (per-layer alphas, LoCon convolutions), stacking,
exact unloading, the record of what was applied, and every bad input refused with nothing changed."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffusion_notes.adapters import lora_hashes, lora_layers
from diffusion_notes.errors import CheckpointError
from diffusion_notes.stable_diffusion import StableDiffusion

from .lora_files import kohya_lora


@pytest.fixture
def pair(tiny):
    """``(diffusers pipeline, our StableDiffusion)`` of the tiny SD 1.x model; ours freshly loaded (it gets changed)."""
    folder, pipe = tiny("sd1")
    return pipe, StableDiffusion.from_pretrained(folder, torch_dtype=torch.float32)


def weights(sd) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in sd.state_dict().items()}


def test_each_layer_gains_alpha_over_rank_times_up_after_down(pair):
    """Per layer: the merged layer minus the original, applied to an input, equals
    m·α/r·up(down(x)) run as two layers (LoRA, Hu et al. 2021, Eq. 3; kohya's LoCon for convolutions)."""
    pipe, sd = pair
    state = kohya_lora(pipe, rank=4, alpha=lambda i: 1.0 + 0.5 * (i % 4))  # 1 .. 2.5, never the rank
    before = weights(sd)
    sd.load_lora(state, scale=0.6)
    after = sd.state_dict()
    g = torch.Generator().manual_seed(2)
    kinds = set()
    for layer in lora_layers(state, sd):
        key = layer.target.removeprefix("unet.").removeprefix("prompt_encoder.") + ".weight"
        key = ("unet." if layer.target.startswith("unet.") else "prompt_encoder.") + key
        # float64 from here on: only the merge's own float32 rounding is under test, not this CPU's kernels
        delta = (after[key] - before[key]).double()
        factor = 0.6 * layer.alpha / 4
        if delta.dim() == 2:
            x = torch.randn(3, delta.shape[1], generator=g, dtype=torch.float64)
            expected = factor * F.linear(F.linear(x, layer.down.flatten(1).double()), layer.up.flatten(1).double())
            got = F.linear(x, delta)
        else:
            x = torch.randn(1, delta.shape[1], 6, 6, generator=g, dtype=torch.float64)
            pad = delta.shape[-1] // 2
            down = layer.down if layer.down.dim() == 4 else layer.down[:, :, None, None]
            up = layer.up if layer.up.dim() == 4 else layer.up[:, :, None, None]
            expected = factor * F.conv2d(F.conv2d(x, down.double(), padding=pad), up.double())
            got = F.conv2d(x, delta, padding=pad)
        kinds.add((delta.dim(), delta.shape[-1] if delta.dim() == 4 else 0))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert kinds == {(2, 0), (4, 1), (4, 3)}  # Linear, 1x1 proj_in/out, 3x3 ResBlock convs (LoCon)


def test_loras_stack_and_unload_restores_the_original_weights_exactly(pair, tmp_path):
    pipe, sd = pair
    before = weights(sd)
    linear = sd.unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q
    original_parameter = linear.weight
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    save_file(kohya_lora(pipe, seed=0), first)
    save_file(kohya_lora(pipe, seed=1), second)

    sd.load_lora(first, scale=0.5)
    once = weights(sd)
    sd.load_lora(second, scale=-0.3)
    twice = sd.state_dict()
    # stacking: the second LoRA adds its own ΔW on top of the first
    key = "unet.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    layer = next(l for l in lora_layers(kohya_lora(pipe, seed=1), sd) if l.target == key[:-7])
    torch.testing.assert_close(twice[key] - once[key], -0.3 * 3 / 4 * layer.up @ layer.down, rtol=1e-5, atol=1e-6)

    assert [a.name for a in sd.applied_loras] == ["first", "second"]
    assert [a.scale for a in sd.applied_loras] == [0.5, -0.3]
    assert sd.applied_loras[0].sha256 == hashlib.sha256(first.read_bytes()).hexdigest()
    # AUTOMATIC1111 (modules/hashes.py addnet_hash_safetensors): sha256 of the bytes after the 8 + n header bytes
    addnet = [hashlib.sha256(b[8 + int.from_bytes(b[:8], "little"):]).hexdigest()
              for b in (first.read_bytes(), second.read_bytes())]
    assert lora_hashes(sd.applied_loras) == f'Lora hashes: "first: {addnet[0][:12]}, second: {addnet[1][:12]}"'

    sd.unload_loras()
    restored = sd.state_dict()
    assert restored.keys() == before.keys()
    assert all(torch.equal(restored[k], before[k]) for k in before)
    assert linear.weight is original_parameter  # the very tensor, not a copy
    assert sd.applied_loras == ()
    sd.load_lora(first, scale=0.5)  # and the model still takes LoRAs afterwards
    assert all(torch.equal(sd.state_dict()[k], once[k]) for k in once)


def bad_cases(pipe):
    """``(name, state dict, expected message)``: a valid LoRA with one bad entry (added last, or removed)."""
    good = kohya_lora(pipe)
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    cases = {
        "no such layer": ({"lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
                           "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4)},
                          "matches no layer of this sd1 model"),
        "an SDXL LoRA": ({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 128),
                          "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(256, 4)},
                         "'lora_te2_' is SDXL's"),
        "wrong width": ({f"{q}.lora_down.weight": torch.zeros(4, 48)}, r"is \(32, 32\)"),
        "rank mismatch": ({f"{q}.lora_up.weight": torch.zeros(32, 3)}, "do not form a rank-r product"),
        "NaN": ({f"{q}.lora_up.weight": torch.full((32, 4), float("nan"))}, "NaN"),
        "inf alpha": ({f"{q}.alpha": torch.tensor(float("inf"))}, "alpha is inf"),
        "DoRA": ({f"{q}.dora_scale": torch.ones(1, 32)}, "DoRA"),
        "LoHa with Tucker factors": ({f"{q}.hada_t1": torch.ones(4, 4, 3, 3)}, "Tucker"),
        "missing up": ({"lora_unet_mid_block_attentions_0_proj_out.lora_up.weight": None}, "has no up factor"),
    }
    for name, (extra, message) in cases.items():
        state = dict(good)
        for key, tensor in extra.items():  # None: take the tensor out
            state.pop(key, None)
            if tensor is not None:
                state[key] = tensor
        yield name, state, message


def test_bad_loras_are_refused_in_one_line_and_change_nothing(pair, tmp_path):
    pipe, sd = pair
    before = weights(sd)
    seen = 0
    for name, state, message in bad_cases(pipe):
        path = tmp_path / f"{name}.safetensors"
        save_file(state, path)
        with pytest.raises(CheckpointError, match=message) as error:
            sd.load_lora(path)
        assert "\n" not in str(error.value), name
        assert all(torch.equal(v, before[k]) for k, v in sd.state_dict().items()), name
        assert sd.applied_loras == (), name
        seen += 1
    assert seen == 9


def test_files_that_are_no_lora_are_refused(pair, tmp_path):
    _, sd = pair
    checkpoint = tmp_path / "unet.safetensors"
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in list(sd.unet.state_dict().items())[:5]},
              checkpoint)
    with pytest.raises(CheckpointError, match="not a LoRA file"):
        sd.load_lora(checkpoint)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        sd.load_lora(text)
    with pytest.raises(CheckpointError, match="finite"):
        sd.load_lora(kohya_lora(pair[0]), scale=float("nan"))
    assert sd.applied_loras == ()

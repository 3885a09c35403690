"""PEFT ``lora_alpha`` / ``r`` / ``rank_pattern`` / ``alpha_pattern`` / ``use_rslora`` of a diffusers-written LoRA:
merged by this package vs diffusers + PEFT reading the same file (``load_lora_weights`` + ``fuse_lora``).

diffusers (>= 0.34) stores each component's ``LoraConfig.to_dict()`` in the safetensors metadata
(``"lora_adapter_metadata"``); with alpha != r, patterns that give some layers another rank or alpha, and
rsLoRA's alpha / sqrt(r) on the text encoder, the UNet's and text encoder's outputs must agree to 1e-5
relative in float32, and differ from the outputs of the same file read as alpha = r (no metadata).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffusion_notes.adapters.peft_config import METADATA_KEY, peft_alpha
from diffusion_notes.errors import CheckpointError

from .lora_files import TEXT_LAYERS, UNET_LAYERS, adapted_layers, random_factors
from .test_lora_diffusers import load_both, outputs_of_diffusers, outputs_of_ours, relative

pytest.importorskip("peft")

UNET_RANK_PATTERN = {"ff.net.2": 2}  # these layers have rank 2, the others 4
UNET_ALPHA_PATTERN = {"attn2.to_k": 1.5, "conv2": 5.0}


def factors(network, pattern, ranks, generator) -> dict:
    state = {}
    for name, shape in adapted_layers(network, pattern):
        rank = next((r for p, r in ranks.items() if re.match(rf"(.*\.)?({p})$", name)), 4)
        down, up = random_factors(shape, rank, generator)
        state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = down, up
    return state


def test_peft_metadata_scales_equal_diffusers(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    pipe, sd = load_both(tiny, "sd1")
    g = torch.Generator().manual_seed(11)
    unet_layers, text_layers = factors(pipe.unet, UNET_LAYERS, UNET_RANK_PATTERN, g), factors(
        pipe.text_encoder, TEXT_LAYERS, {}, g)
    unet_config = LoraConfig(r=4, lora_alpha=6, rank_pattern=UNET_RANK_PATTERN, alpha_pattern=UNET_ALPHA_PATTERN,
                             target_modules=[k.removesuffix(".lora_A.weight") for k in unet_layers if "lora_A" in k])
    text_config = LoraConfig(r=4, lora_alpha=3, use_rslora=True,
                             target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=unet_layers,
                                              text_encoder_lora_layers=text_layers,
                                              unet_lora_adapter_metadata=unet_config.to_dict(),
                                              text_encoder_lora_adapter_metadata=text_config.to_dict())
    path = tmp_path / "pytorch_lora_weights.safetensors"
    with safe_open(path, "pt") as f:
        stored = json.loads(f.metadata()[METADATA_KEY])
    assert stored["unet.lora_alpha"] == 6 and stored["text_encoder.use_rslora"] is True

    pipe.load_lora_weights(tmp_path)
    pipe.fuse_lora(lora_scale=0.8)
    sd.load_lora(path, scale=0.8)
    (unet, text), (their_unet, their_text) = outputs_of_ours(sd), outputs_of_diffusers(pipe)
    print(f"peft metadata: unet {relative(unet, their_unet):.2e}, text {relative(text, their_text):.2e}")
    assert relative(unet, their_unet) < 1e-5
    assert relative(text, their_text) < 1e-5

    sd.unload_loras()  # the same tensors without the metadata: alpha = r, another result
    with safe_open(path, "pt") as f:
        bare = {k: f.get_tensor(k) for k in f.keys()}
    save_file(bare, tmp_path / "bare.safetensors")
    sd.load_lora(tmp_path / "bare.safetensors", scale=0.8)
    bare_unet, bare_text = outputs_of_ours(sd)
    assert relative(bare_unet, their_unet) > 1e-3 and relative(bare_text, their_text) > 1e-3


def test_adapter_config_json_beside_the_file_gives_the_scale(tiny, tmp_path):
    """PEFT's save_pretrained writes adapter_config.json beside the weights: lora_alpha / r for every layer."""
    pipe, sd = load_both(tiny, "sd1")
    state = {"unet." + k: v for k, v in factors(pipe.unet, UNET_LAYERS, {}, torch.Generator().manual_seed(2)).items()}
    save_file(state, tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 2}))
    base = outputs_of_ours(sd)[0]
    sd.load_lora(tmp_path / "adapter_model.safetensors", scale=1.0)
    with_config = outputs_of_ours(sd)[0] - base
    sd.unload_loras()
    (tmp_path / "adapter_config.json").unlink()  # no config: alpha = r; multiplier 1/2 = the config's alpha / r
    sd.load_lora(tmp_path / "adapter_model.safetensors", scale=0.5)
    half = outputs_of_ours(sd)[0] - base
    assert relative(with_config, half) < 1e-5


@pytest.mark.parametrize("config, message", [
    ({"r": 8, "lora_alpha": 8}, "config says rank 8, its factors have rank 4"),
    ({"r": 4, "lora_alpha": 4, "use_dora": True}, "DoRA"),
    ({"r": 4, "lora_alpha": "x"}, "not a finite number"),
])
def test_configs_that_contradict_the_factors_are_refused(config, message):
    with pytest.raises(CheckpointError, match=message):
        peft_alpha(config, "down_blocks.0.attn1.to_q", 4, "unet.down_blocks.0.attn1.to_q")


def test_patterns_match_at_a_dot_as_peft_does():
    config = {"r": 4, "lora_alpha": 4, "alpha_pattern": {"to_q": 2.0}}
    assert peft_alpha(config, "attn1.to_q", 4, "x") == 2.0
    assert peft_alpha(config, "attn1.add_to_q", 4, "x") == 4.0  # "to_q" must follow a dot

"""Architecture detection and key mapping at the released sizes, on the meta device (no memory).

Oracles: the released configurations as diffusers writes them (``UNet2DConditionModel`` configs of
SD 1.5, SD 2.1 and SDXL base) and diffusers' own parameter names and shapes.
"""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.checkpoints import detect
from diffusion_notes.checkpoints.key_layout import UNET_PREFIX
from diffusion_notes.checkpoints import diffusers_layout as layout
from diffusion_notes.models import AutoencoderKL, UNetModel, unet_preset, vae_preset

# diffusers config.json of the released UNets (values as published on the hub).
RELEASED = {
    "sd1": dict(cross_attention_dim=768, attention_head_dim=8,
                down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, block_out_channels=[320, 640, 1280, 1280]),
    "sd2": dict(cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True,
                upcast_attention=True, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, block_out_channels=[320, 640, 1280, 1280]),
    "sdxl": dict(cross_attention_dim=2048, attention_head_dim=[5, 10, 20], use_linear_projection=True,
                 transformer_layers_per_block=[1, 2, 10], addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, block_out_channels=[320, 640, 1280],
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]),
}


def _meta_state_dict(module_cls, config) -> dict:
    with torch.device("meta"):
        return module_cls(config).state_dict()


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_released_unet_configs_agree_with_diffusers(family):
    from diffusers import UNet2DConditionModel

    released = dict(in_channels=4, out_channels=4, layers_per_block=2, **RELEASED[family])
    ours = unet_preset(family)
    assert layout.unet_config_from_diffusers(released) == ours
    with torch.device("meta"):
        theirs = UNet2DConditionModel(**released).state_dict()
    mapped = layout.unet_to_diffusers(_meta_state_dict(UNetModel, ours), ours)
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("family, overrides", [("sd1", {}), ("sd1", {"in_channels": 9}), ("sd2", {}), ("sdxl", {})])
def test_detection_from_shapes_recovers_the_release(family, overrides):
    config = unet_preset(family, **overrides)
    unet = _meta_state_dict(UNetModel, config)
    assert detect.unet_config_from_state_dict(unet, family, pooled_dim=1280 if family == "sdxl" else None) == config
    text_key = {"sd1": "cond_stage_model.transformer.text_model.x", "sd2": "cond_stage_model.model.x"}
    full = {UNET_PREFIX + k: v for k, v in unet.items()}
    if family == "sdxl":
        full.update({"conditioner.embedders.0.transformer.x": 0, "conditioner.embedders.1.model.x": 0})
    else:
        full[text_key[family]] = 0
    assert detect.detect_family(full) == family


def test_context_width_names_the_family_when_text_keys_are_absent():
    unet = _meta_state_dict(UNetModel, unet_preset("sd2"))
    assert detect.detect_family({UNET_PREFIX + k: v for k, v in unet.items()}) == "sd2"


def test_released_vae_agrees_with_diffusers():
    from diffusers import AutoencoderKL as DiffusersVAE

    config = vae_preset()
    released = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
    assert layout.vae_config_from_diffusers(released) == config
    ours = _meta_state_dict(AutoencoderKL, config)
    assert detect.vae_config_from_state_dict(ours) == config
    with torch.device("meta"):
        theirs = DiffusersVAE(**released).state_dict()
    mapped = layout.vae_to_diffusers(ours, config)
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in theirs.items()}


def test_yaml_sets_heads_and_parameterization(tmp_path):
    from models.builders import write_original_yaml

    original = detect.read_original_yaml(write_original_yaml(tmp_path / "v.yaml", "sd2", "v"))
    assert original.prediction_type == "v" and original.scale_factor == 0.18215
    config = detect.apply_yaml_unet(unet_preset("sd2", model_channels=32, channel_mult=(1, 2), transformer_depth=(0, 1), context_dim=64,
                                                num_head_channels=8), original.unet_params, "v.yaml")
    assert config.num_head_channels == 64 and config.num_heads == -1


@pytest.mark.parametrize("family, context_dim", [("sd1", 768), ("sd2", 1024), ("sdxl", 2048)])
def test_released_unet_shapes_on_meta(family, context_dim):
    """The shapes of the study note: a CFG batch of 3+3 latents, (3+3, 77, 768) prompt features for
    SD 1.x, and a (B, 1280) time embedding; computed on the meta device, so no memory is used."""
    with torch.device("meta"):
        unet = UNetModel(unet_preset(family))
        x, t = torch.empty(6, 4, 64, 64), torch.full((6,), 981)
        context = torch.empty(6, 77, context_dim)
        y = torch.empty(6, 2816) if family == "sdxl" else None
        assert unet.time_embed(torch.empty(6, 320)).shape == (6, 1280)
        assert unet(x, t, context, y=y).shape == (6, 4, 64, 64)

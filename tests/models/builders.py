"""Tiny random Stable Diffusion checkpoints, built with diffusers' and transformers' own classes.

These are the independent oracles of the model tests (diffusers is test-only) and the fixtures of
the text-to-image tests: ``make_tiny_diffusers_folder(path, family)`` writes a diffusers-layout
folder for ``family`` in ``FAMILIES`` and returns the diffusers pipeline that wrote it.

Sizes respect the rules ``checkpoints.detect`` applies to weights (they cannot be seen in tensors):
SD 1.x has 8 attention heads, SD 2.x / SDXL 64 channels per head, CLIP text encoders 64 channels
per head with ``quick_gelu`` for OpenAI CLIP and ``gelu`` for OpenCLIP.
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("sd1", "sd1-inpaint", "sd2", "sdxl")


def write_tiny_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> Path:
    """A CLIP BPE tokenizer over single letters plus four merges, padded to 77 tokens (the benchmarks' one)."""
    from benchmarks.common import write_tokenizer

    return write_tokenizer(Path(folder), pad_token=pad_token)


def _tiny_clip(tokenizer, hidden: int, act: str, projection_dim: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
        num_attention_heads=hidden // 64, max_position_embeddings=77, hidden_act=act,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=projection_dim or hidden,
    )
    model = (CLIPTextModelWithProjection if projection_dim else CLIPTextModel)(config)
    return model.eval()


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=4, norm_num_groups=32, sample_size=16,
    ).eval()


def _tiny_unet(family: str):
    from diffusers import UNet2DConditionModel

    common = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=8, norm_num_groups=32)
    if family in ("sd1", "sd1-inpaint"):
        return UNet2DConditionModel(
            in_channels=9 if family == "sd1-inpaint" else 4, out_channels=4, cross_attention_dim=64,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=8, **common,
        ).eval()
    # SD 2.x and SDXL: linear proj_in, 64 channels per head, attention only at the coarse level.
    kwargs = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                  attention_head_dim=(1, 1), use_linear_projection=True, in_channels=4, out_channels=4, **common)
    if family == "sd2":
        return UNet2DConditionModel(cross_attention_dim=64, upcast_attention=True, **kwargs).eval()
    return UNet2DConditionModel(
        cross_attention_dim=64 + 128, transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8, **kwargs,
    ).eval()


def make_scheduler(prediction_type: str):
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def make_tiny_pipeline(family: str, work_dir: Path, seed: int = 0):
    """A diffusers pipeline of ``family`` with random tiny weights (tokenizers written under ``work_dir``)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    work_dir = Path(work_dir)
    # open_clip pads with "!" (id 0): SD 2.x's tokenizer and SDXL's tokenizer_2 do too.
    pad = "!" if family == "sd2" else "<|endoftext|>"
    tokenizer = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(work_dir / "tok", pad_token=pad))
    if family == "sdxl":
        tokenizer_2 = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(work_dir / "tok2", pad_token="!"))
        return StableDiffusionXLPipeline(
            vae=_tiny_vae(), text_encoder=_tiny_clip(tokenizer, 64, "quick_gelu"),
            text_encoder_2=_tiny_clip(tokenizer_2, 128, "gelu", projection_dim=32), tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, unet=_tiny_unet(family), scheduler=make_scheduler("epsilon"),
        )
    act = "gelu" if family == "sd2" else "quick_gelu"
    return StableDiffusionPipeline(
        vae=_tiny_vae(), text_encoder=_tiny_clip(tokenizer, 64, act), tokenizer=tokenizer, unet=_tiny_unet(family),
        scheduler=make_scheduler("v_prediction" if family == "sd2" else "epsilon"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def make_tiny_diffusers_folder(path, family: str, seed: int = 0):
    """Write a tiny random ``family`` model as a diffusers folder at ``path``; returns the diffusers pipeline."""
    path = Path(path)
    pipe = make_tiny_pipeline(family, path.parent / f".{path.name}-tokenizers", seed)
    pipe.save_pretrained(path)
    return pipe


def write_original_yaml(path, family: str, parameterization: str = "eps") -> Path:
    """A CompVis-style inference YAML describing the tiny ``family`` model (for ``from_single_file(config=)``)."""
    import yaml

    unet = {"in_channels": 9 if family == "sd1-inpaint" else 4, "out_channels": 4, "model_channels": 32,
            "channel_mult": [1, 2], "num_res_blocks": 2}
    if family.startswith("sd1"):
        unet.update(attention_resolutions=[1], num_heads=8, context_dim=64, transformer_depth=1)
    elif family == "sd2":
        unet.update(attention_resolutions=[2], num_head_channels=64, context_dim=64, transformer_depth=1,
                    use_linear_in_transformer=True)
    else:
        unet.update(attention_resolutions=[2], num_head_channels=64, context_dim=192, transformer_depth=[0, 2],
                    use_linear_in_transformer=True, adm_in_channels=80, num_classes="sequential")
    first_stage = {"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "in_channels": 3, "out_ch": 3,
                                                "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": []}}
    params = {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "parameterization": parameterization,
              "scale_factor": 0.13025 if family == "sdxl" else 0.18215,
              "unet_config": {"params": unet}, "first_stage_config": {"params": first_stage}}
    if family == "sdxl":
        params["network_config"] = params.pop("unet_config")
    Path(path).write_text(yaml.safe_dump({"model": {"params": params}}))
    return Path(path)

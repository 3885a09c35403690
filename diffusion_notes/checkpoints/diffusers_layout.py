"""Translate between the diffusers folder layout and CompVis names for the UNet and the VAE.

The networks here carry CompVis names (``input_blocks.1.1.transformer_blocks.0.attn2.to_k``);
diffusers names the same tensors after its block classes
(``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k``). Both walk the same structure, so
the map is generated from the configuration rather than listed: ``unet_module_pairs`` and
``vae_module_pairs`` yield ``(compvis_prefix, diffusers_prefix)`` for every module whose
parameters are renamed, and a key is translated by its longest matching prefix. Inside a
SpatialTransformer the two layouts already agree. (diffusers' counterpart:
``loaders/single_file_utils.py``, ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint``.)

The config translators read and write diffusers' ``config.json`` dictionaries.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..models.config import AutoencoderConfig, UNetConfig
from .io import CheckpointError

__all__ = [
    "unet_module_pairs", "vae_module_pairs", "unet_to_diffusers", "unet_from_diffusers", "vae_to_diffusers",
    "vae_from_diffusers", "unet_config_from_diffusers", "unet_config_to_diffusers", "vae_config_from_diffusers",
    "vae_config_to_diffusers",
]

# CompVis ResBlock part -> diffusers ResnetBlock2D part.
_UNET_RESNET = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut"))
_VAE_RESNET = (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
               ("nin_shortcut", "conv_shortcut"))
_VAE_ATTENTION = (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0"))


def _expand(compvis: str, diffusers: str, parts) -> Iterator[tuple[str, str]]:
    for cv_part, df_part in parts:
        yield f"{compvis}.{cv_part}", f"{diffusers}.{df_part}"


def unet_module_pairs(c: UNetConfig) -> Iterator[tuple[str, str]]:
    """``(compvis_prefix, diffusers_prefix)`` for every renamed module of the UNet."""
    yield from (("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"),
                ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out"))
    if c.adm_in_channels is not None:
        yield from (("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2"))
    levels, n = len(c.channel_mult), c.num_res_blocks
    block = 1
    for level in range(levels):
        for j in range(n):
            yield from _expand(f"input_blocks.{block}.0", f"down_blocks.{level}.resnets.{j}", _UNET_RESNET)
            yield f"input_blocks.{block}.1", f"down_blocks.{level}.attentions.{j}"
            block += 1
        if level != levels - 1:
            yield f"input_blocks.{block}.0.op", f"down_blocks.{level}.downsamplers.0.conv"
            block += 1
    yield from _expand("middle_block.0", "mid_block.resnets.0", _UNET_RESNET)
    yield "middle_block.1", "mid_block.attentions.0"
    yield from _expand("middle_block.2", "mid_block.resnets.1", _UNET_RESNET)
    for up in range(levels):  # diffusers numbers up_blocks from the coarsest level
        level = levels - 1 - up
        for j in range(n + 1):
            block = up * (n + 1) + j
            yield from _expand(f"output_blocks.{block}.0", f"up_blocks.{up}.resnets.{j}", _UNET_RESNET)
            has_attention = c.transformer_depth[level] > 0
            if has_attention:
                yield f"output_blocks.{block}.1", f"up_blocks.{up}.attentions.{j}"
            if level and j == n:
                yield f"output_blocks.{block}.{2 if has_attention else 1}.conv", f"up_blocks.{up}.upsamplers.0.conv"


def vae_module_pairs(c: AutoencoderConfig) -> Iterator[tuple[str, str]]:
    """``(compvis_prefix, diffusers_prefix)`` for every renamed module of the autoencoder."""
    levels = len(c.ch_mult)
    for level in range(levels):
        for j in range(c.num_res_blocks):
            yield from _expand(f"encoder.down.{level}.block.{j}", f"encoder.down_blocks.{level}.resnets.{j}", _VAE_RESNET)
        yield f"encoder.down.{level}.downsample.conv", f"encoder.down_blocks.{level}.downsamplers.0.conv"
    for up in range(levels):
        level = levels - 1 - up
        for j in range(c.num_res_blocks + 1):
            yield from _expand(f"decoder.up.{level}.block.{j}", f"decoder.up_blocks.{up}.resnets.{j}", _VAE_RESNET)
        yield f"decoder.up.{level}.upsample.conv", f"decoder.up_blocks.{up}.upsamplers.0.conv"
    for coder in ("encoder", "decoder"):
        yield from _expand(f"{coder}.mid.block_1", f"{coder}.mid_block.resnets.0", _VAE_RESNET)
        yield from _expand(f"{coder}.mid.attn_1", f"{coder}.mid_block.attentions.0", _VAE_ATTENTION)
        yield from _expand(f"{coder}.mid.block_2", f"{coder}.mid_block.resnets.1", _VAE_RESNET)
        yield f"{coder}.norm_out", f"{coder}.conv_norm_out"
        yield from ((f"{coder}.{name}", f"{coder}.{name}") for name in ("conv_in", "conv_out"))
    yield from (("quant_conv", "quant_conv"), ("post_quant_conv", "post_quant_conv"))


def _rename(state_dict: dict, prefix_map: dict[str, str], what: str) -> dict:
    """Rename every key by its longest prefix found in ``prefix_map`` (prefixes end at a dot)."""
    renamed = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            head = ".".join(parts[:cut])
            if head in prefix_map:
                renamed[prefix_map[head] + "." + ".".join(parts[cut:])] = tensor
                break
        else:
            raise CheckpointError(f"{what}: key {key!r} does not belong to the configured architecture; "
                                  "check that the config matches the weights.")
    return renamed


def unet_to_diffusers(state_dict: dict, config: UNetConfig) -> dict:
    """CompVis UNet keys (prefix stripped) -> diffusers ``UNet2DConditionModel`` keys."""
    return _rename(state_dict, dict(unet_module_pairs(config)), "UNet")


def unet_from_diffusers(state_dict: dict, config: UNetConfig) -> dict:
    """diffusers ``UNet2DConditionModel`` keys -> CompVis UNet keys."""
    return _rename(state_dict, {df: cv for cv, df in unet_module_pairs(config)}, "UNet")


def _is_vae_attention(key: str) -> bool:
    return ".attn_1." in key and key.endswith("weight") and not key.split(".")[-2] == "norm"


def vae_to_diffusers(state_dict: dict, config: AutoencoderConfig) -> dict:
    """CompVis VAE keys -> diffusers ``AutoencoderKL`` keys (attention 1x1 convs become Linear)."""
    as_linear = {k: (v.flatten(1) if _is_vae_attention(k) else v) for k, v in state_dict.items()}
    return _rename(as_linear, dict(vae_module_pairs(config)), "VAE")


def vae_from_diffusers(state_dict: dict, config: AutoencoderConfig) -> dict:
    """diffusers ``AutoencoderKL`` keys -> CompVis VAE keys (attention Linear weights become 1x1 convs)."""
    renamed = _rename(state_dict, {df: cv for cv, df in vae_module_pairs(config)}, "VAE")
    return {k: (v[:, :, None, None] if _is_vae_attention(k) and v.ndim == 2 else v) for k, v in renamed.items()}


# --------------------------------------------------------------------------------------------
# config.json <-> dataclasses
# --------------------------------------------------------------------------------------------


def _per_level(value, levels: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def unet_config_from_diffusers(cfg: dict) -> UNetConfig:
    """A diffusers ``UNet2DConditionModel`` config.json -> ``UNetConfig``.

    diffusers' ``attention_head_dim`` is (for historical reasons) the number of heads; a per-level
    list of head counts with a constant channels-per-head becomes CompVis's ``num_head_channels``.
    """
    for key, allowed in (("class_embed_type", None), ("time_cond_proj_dim", None), ("encoder_hid_dim", None),
                         ("resnet_time_scale_shift", "default"), ("addition_embed_type", (None, "text_time"))):
        value = cfg.get(key, allowed if not isinstance(allowed, tuple) else None)
        if value != allowed and not (isinstance(allowed, tuple) and value in allowed):
            raise CheckpointError(f"unsupported UNet: diffusers config has {key}={value!r}; "
                                  "only Stable Diffusion 1.x/2.x/XL UNets are supported.")
    widths = list(cfg["block_out_channels"])
    levels = len(widths)
    has_attention = ["CrossAttn" in t for t in cfg["down_block_types"]]
    depths = _per_level(cfg.get("transformer_layers_per_block", 1), levels)
    heads = _per_level(cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8), levels)
    # Only levels with attention (and the middle block, at the last level) constrain the heads.
    head_dims = {w // h for w, h, a in zip(widths, heads, has_attention[:-1] + [True]) if a}
    if isinstance(cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8), int):
        head_kwargs = {"num_heads": heads[0], "num_head_channels": -1}
    elif len(head_dims) == 1:
        head_kwargs = {"num_heads": -1, "num_head_channels": head_dims.pop()}
    else:
        raise CheckpointError(f"unsupported UNet: heads {heads} give channels per head {sorted(head_dims)}.")
    text_time = cfg.get("addition_embed_type") == "text_time"
    return UNetConfig(
        in_channels=cfg["in_channels"], out_channels=cfg["out_channels"], model_channels=widths[0],
        channel_mult=tuple(w // widths[0] for w in widths), num_res_blocks=cfg["layers_per_block"],
        transformer_depth=tuple(d if a else 0 for d, a in zip(depths, has_attention)),
        transformer_depth_middle=depths[-1], context_dim=cfg["cross_attention_dim"],
        use_linear_in_transformer=cfg.get("use_linear_projection", False),
        adm_in_channels=cfg.get("projection_class_embeddings_input_dim") if text_time else None,
        addition_time_embed_dim=cfg.get("addition_time_embed_dim") or 256,
        upcast_attention=cfg.get("upcast_attention", False), **head_kwargs,
    )


def unet_config_to_diffusers(c: UNetConfig, sample_size: int = 64) -> dict:
    """``UNetConfig`` -> a diffusers ``UNet2DConditionModel`` config.json dictionary."""
    widths = [c.model_channels * m for m in c.channel_mult]
    depths = [d if d > 0 else 1 for d in c.transformer_depth]
    if c.transformer_depth[-1] > 0 and depths[-1] != c.transformer_depth_middle:
        raise CheckpointError("this UNet has a middle depth diffusers cannot express; save it with save_single_file.")
    depths[-1] = c.transformer_depth_middle  # diffusers' middle block reads the last entry
    cfg = {
        "_class_name": "UNet2DConditionModel", "sample_size": sample_size,
        "in_channels": c.in_channels, "out_channels": c.out_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in c.transformer_depth],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(c.transformer_depth)],
        "mid_block_type": "UNetMidBlock2DCrossAttn", "block_out_channels": widths,
        "layers_per_block": c.num_res_blocks, "cross_attention_dim": c.context_dim,
        "attention_head_dim": c.num_heads if c.num_head_channels <= 0 else [max(1, w // c.num_head_channels) for w in widths],
        "transformer_layers_per_block": depths, "use_linear_projection": c.use_linear_in_transformer,
        "upcast_attention": c.upcast_attention, "flip_sin_to_cos": True, "freq_shift": 0,
        "norm_num_groups": 32, "act_fn": "silu",
    }
    if c.adm_in_channels is not None:
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=c.addition_time_embed_dim,
                   projection_class_embeddings_input_dim=c.adm_in_channels)
    return cfg


def vae_config_from_diffusers(cfg: dict) -> AutoencoderConfig:
    """A diffusers ``AutoencoderKL`` config.json -> ``AutoencoderConfig``."""
    widths = list(cfg["block_out_channels"])
    return AutoencoderConfig(
        in_channels=cfg.get("in_channels", 3), out_ch=cfg.get("out_channels", 3), ch=widths[0],
        ch_mult=tuple(w // widths[0] for w in widths), num_res_blocks=cfg.get("layers_per_block", 1),
        z_channels=cfg.get("latent_channels", 4), embed_dim=cfg.get("latent_channels", 4),
    )


def vae_config_to_diffusers(c: AutoencoderConfig, scaling_factor: float, sample_size: int = 512) -> dict:
    """``AutoencoderConfig`` -> a diffusers ``AutoencoderKL`` config.json dictionary."""
    if c.embed_dim != c.z_channels:
        raise CheckpointError("diffusers' AutoencoderKL needs embed_dim == z_channels; save with save_single_file.")
    levels = len(c.ch_mult)
    return {
        "_class_name": "AutoencoderKL", "in_channels": c.in_channels, "out_channels": c.out_ch,
        "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [c.ch * m for m in c.ch_mult], "layers_per_block": c.num_res_blocks,
        "latent_channels": c.z_channels, "norm_num_groups": 32, "act_fn": "silu",
        "sample_size": sample_size, "scaling_factor": scaling_factor,
    }

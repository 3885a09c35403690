"""Original single-file checkpoints, read and written: CompVis / sgm names in one file.

``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE) and the text encoder(s) under the
family's prefixes (:data:`diffusion_notes.checkpoints.TEXT_PREFIXES`). The architecture is read
from tensor shapes (:mod:`~diffusion_notes.checkpoints.detect`); an optional original YAML adds what
shapes cannot tell. Counterparts: diffusers ``from_single_file``; CompVis ``load_model_from_config``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.config import SCALE_FACTORS, TEXT_SPECS, StableDiffusionConfig
from ..models.text import PromptEncoder, clip_transformer
from ..models.unet import UNetModel
from ..models.vae import AutoencoderKL
from ..precision import default_dtype
from ..schedules import NoiseSchedule
from . import detect
from .consistency import check_sibling_sizes
from .background_import import import_in_background
from .building import LoadedParts, build, build_clip, clip_state_dict, place, prediction_name, token_ids
from .io import load_state_dict, refuse_existing, save_state_dict
from .key_layout import EMA_PREFIX, TEXT_PREFIXES, UNET_PREFIX, VAE_PREFIX, is_openclip, pick_ema, strip_prefix
from .metadata import ModelMetadata, from_header, read_header, to_header
from .openclip import openclip_to_transformers, transformers_to_openclip
from .tokenizers import single_file_tokenizers

__all__ = ["load_single_file", "save_single_file", "model_header"]


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def load_single_file(path, config=None, tokenizer=None, prediction_type: str | None = None,
                     torch_dtype: torch.dtype | None = None, device=None, use_ema: bool = False,
                     prepack: bool | None = None) -> LoadedParts:
    """The parts of a ``StableDiffusion``, on ``device`` in ``torch_dtype``, from an original checkpoint;
    see :meth:`StableDiffusion.from_single_file <diffusion_notes.stable_diffusion.StableDiffusion.from_single_file>`."""
    dtype = torch_dtype or default_dtype(device)
    if prediction_type is not None:
        prediction_name(prediction_type)  # a bad name fails before the weights are read
    yaml = detect.read_original_yaml(config) if config is not None else detect.OriginalConfig()
    importing = import_in_background()  # transformers' CLIP, on a second core while the weights are read
    # Converted as read, tensor by tensor (checkpoints.io); EMA copies that will not be used are never read.
    state_dict = pick_ema(load_state_dict(path, dtype=dtype, skip=None if use_ema else _is_unused_ema), use_ema)
    if importing is not None:
        importing.join()
    check_sibling_sizes(state_dict, path)
    try:
        arch = detect.detect_architecture(state_dict)
    except KeyError as exc:
        raise CheckpointError(f"{path}: lacks the tensor {exc.args[0]!r} that the architecture is read from; the "
                              "file is incomplete or not a Stable Diffusion checkpoint.") from None
    meta = from_header(read_header(path), path)
    # Precedence for what shapes cannot show: arguments, then the YAML, then the file's metadata, then the family.
    unet_config = detect.apply_metadata_heads(arch.unet, meta.num_heads, meta.num_head_channels)
    unet_config = detect.apply_yaml_unet(unet_config, yaml.unet_params, config)
    prediction = prediction_type or (yaml.prediction_type if config is not None else None)
    sd_config = StableDiffusionConfig(
        arch.family, unet_config, arch.vae, prediction_name(prediction or meta.prediction_type or "eps"),
        yaml.scale_factor or meta.scale_factor or SCALE_FACTORS[arch.family], meta.native_size,
    )
    tokenizers = single_file_tokenizers(arch.family, tokenizer)
    try:
        unet = build(UNetModel, unet_config, strip_prefix(state_dict, UNET_PREFIX), "UNet",
                     UNET_PREFIX, str(config) if config is not None else None)
    except (AssertionError, ZeroDivisionError, ValueError) as exc:  # heads that do not divide the widths
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{config}: its attention heads (num_heads / num_head_channels) do not fit the "
                              f"weights' widths ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                              "this YAML describes another model.") from None
    # Training checkpoints keep the autoencoder's LPIPS/discriminator loss under first_stage_model.loss.
    vae_sd = {k: v for k, v in strip_prefix(state_dict, VAE_PREFIX).items() if not k.startswith("loss.")}
    vae = build(AutoencoderKL, arch.vae, vae_sd, "VAE", VAE_PREFIX)
    text_heads = meta.text_heads or _folder_text_heads(tokenizer, len(tokenizers))
    encoders = _text_encoders(state_dict, arch.family, tokenizers, text_heads)
    schedule = NoiseSchedule.from_name("scaled_linear", yaml.timesteps, linear_start=yaml.linear_start,
                                       linear_end=yaml.linear_end)
    parts = LoadedParts(sd_config, unet, vae, PromptEncoder(tokenizers, encoders, TEXT_SPECS[arch.family]), schedule)
    return place(parts, device, dtype, prepack)


def _is_unused_ema(name: str) -> bool:
    return name.startswith(EMA_PREFIX)


def _folder_text_heads(tokenizer, count: int) -> tuple[int, ...] | None:
    """The CLIP head counts of a diffusers folder given as ``tokenizer=`` (its ``text_encoder*/config.json``)."""
    if tokenizer is None:
        return None
    configs = [Path(tokenizer) / f"text_encoder{f'_{i + 1}' if i else ''}" / "config.json" for i in range(count)]
    if not all(c.is_file() for c in configs):
        return None
    return tuple(int(json.loads(c.read_text())["num_attention_heads"]) for c in configs)


def _text_encoders(state_dict: dict, family: str, tokenizers: list,
                   heads: tuple[int, ...] | None = None) -> list[nn.Module]:
    """The CLIP text encoder(s) of a single file; ``heads`` (from the metadata) per encoder, else the
    release's. Each tokenizer is set to read as many positions as its encoder has."""
    from transformers import CLIPTextConfig

    prefixes = TEXT_PREFIXES[family]
    if heads is not None and len(heads) != len(prefixes):
        raise CheckpointError(f"the metadata gives {len(heads)} text-encoder head counts for a {family} "
                              f"checkpoint with {len(prefixes)} text encoder(s); fix the file's metadata.")
    encoders = []
    for index, (prefix, spec) in enumerate(zip(prefixes, TEXT_SPECS[family])):
        if is_openclip(prefix):  # open_clip layout (SD 2.x ViT-H, SDXL bigG)
            weights = openclip_to_transformers(state_dict, prefix=prefix)
            act = "gelu"
        else:
            weights = strip_prefix(state_dict, prefix)
            act = "quick_gelu"
        if not weights:
            raise CheckpointError(f"checkpoint has no text encoder under {prefix!r}; a full {family} checkpoint has one.")
        kwargs = detect.clip_config_kwargs(weights, act, None if heads is None else heads[index], prefix)
        kwargs |= token_ids(tokenizers[index])
        if family == "sd2":
            weights, kwargs = _drop_last_layer(weights, kwargs)
        names = _openclip_file_name(prefix) if is_openclip(prefix) else (lambda name: prefix + name)
        encoders.append(build_clip(CLIPTextConfig(**kwargs), weights, spec.pooled, "text encoder", prefix,
                                   file_name=names))
        tokenizers[index].model_max_length = kwargs["max_position_embeddings"]  # 77 for every release
    return encoders


def _openclip_file_name(prefix: str):
    """transformers CLIP name -> the open_clip name the file stores (q/k/v: their fused ``in_proj``)."""
    qkv = re.compile(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")

    def name(transformers_name: str) -> str:
        match = qkv.fullmatch(transformers_name)
        if match:
            layer, part, kind = match.groups()
            return f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind} (its {part} third)"
        try:
            return next(iter(transformers_to_openclip({transformers_name: torch.empty(0)}, prefix=prefix)))
        except CheckpointError:
            return prefix + transformers_name

    return name


def _drop_last_layer(weights: dict, kwargs: dict) -> tuple[dict, dict]:
    """SD 2.x reads the penultimate OpenCLIP layer; keep the layers below it (diffusers' SD2 convention)."""
    last = kwargs["num_hidden_layers"] - 1
    kept = {k: v for k, v in weights.items() if f"encoder.layers.{last}." not in k}
    return kept, kwargs | {"num_hidden_layers": last}


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def save_single_file(sd, path, overwrite: bool = False, metadata: dict[str, str] | None = None) -> None:
    """Write ``sd`` as one ``.safetensors`` in the original layout; see :meth:`StableDiffusion.save_single_file`."""
    path = Path(path)
    refuse_existing(path, overwrite)
    state_dict = {UNET_PREFIX + k: v for k, v in sd.unet.state_dict().items()}
    state_dict.update({VAE_PREFIX + k: v for k, v in sd.vae.state_dict().items()})
    state_dict.update(_original_text_state_dict(sd))
    save_state_dict(state_dict, path, overwrite=overwrite, metadata={**(metadata or {}), **model_header(sd)})


def model_header(sd) -> dict[str, str]:
    """The ``__metadata__`` entries of ``sd``'s invisible settings (:mod:`~diffusion_notes.checkpoints.metadata`)."""
    c = sd.config
    return to_header(ModelMetadata(
        scale_factor=c.scale_factor, prediction_type=c.prediction_type, num_heads=c.unet.num_heads,
        num_head_channels=c.unet.num_head_channels, native_size=getattr(c, "native_size", None),
        text_heads=tuple(e.config.num_attention_heads for e in sd.text_encoders)))


def _original_text_state_dict(sd) -> dict:
    out = {}
    for encoder, prefix in zip(sd.text_encoders, TEXT_PREFIXES[sd.family]):
        weights = clip_state_dict(encoder)
        if is_openclip(prefix):
            if sd.family == "sd2":
                weights.update(_unused_last_layer(encoder))
            out.update(transformers_to_openclip(weights, prefix=prefix))
        else:
            out.update({prefix + k: v for k, v in weights.items()})
    return out


def _unused_last_layer(encoder: nn.Module) -> dict:
    """The OpenCLIP layer SD 2.x never reads, written as an all-zero block so the file has CompVis's layer count.

    A pre-norm residual block whose output projections are zero is the identity; and since SD 2.x
    takes the penultimate hidden state, this layer's values never reach the UNet anyway.
    """
    layer = clip_transformer(encoder).encoder.layers[-1]
    index = len(clip_transformer(encoder).encoder.layers)
    return {f"text_model.encoder.layers.{index}.{k}": torch.zeros_like(v, device="cpu")
            for k, v in layer.state_dict().items()}

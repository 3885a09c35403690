"""Which Stable Diffusion an original (CompVis-layout) checkpoint holds, read from its tensor shapes.

Shapes give almost everything: channel widths and levels (``input_blocks``), transformer depths,
the context width (``attn2.to_k``: 768 SD 1.x, 1024 SD 2.x, 2048 SDXL), 4 vs 9 input channels
(inpainting), ``label_emb`` (SDXL). The family is named by the text encoder's key layout. Four
things are *not* in the weights and follow each family's released configuration unless an
original YAML says otherwise:

* attention heads (SD 1.x: ``num_heads=8``; SD 2.x/XL: ``num_head_channels=64``);
* CLIP heads (64 channels per head in every release; another width needs the file's metadata) and
  activation (OpenAI CLIP ``quick_gelu``, OpenCLIP ``gelu``);
* the parameterisation: eps, except where the YAML says ``parameterization: "v"`` (SD 2.x 768-v);
* ``scale_factor`` (0.18215 SD 1/2, 0.13025 SDXL).

Files written by ``StableDiffusion.save_single_file`` record all four in their safetensors header
(``checkpoints.metadata``); the loader prefers those records to the family's values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import CheckpointError
from ..models.config import AutoencoderConfig, UNetConfig, unet_preset
from ..schedules import SD_BETA_RANGE
from .key_layout import (CLIP_LAYER, TEXT_PREFIXES, UNET_INPUT_BLOCK, UNET_PREFIX, VAE_LEVEL, VAE_LEVEL_0_RESBLOCK,
                         VAE_PREFIX, indices, strip_prefix, transformer_block)

__all__ = ["Architecture", "detect_family", "detect_architecture", "unet_config_from_state_dict",
           "vae_config_from_state_dict", "clip_config_kwargs", "OriginalConfig", "read_original_yaml",
           "apply_metadata_heads", "apply_yaml_unet", "RELEASED_CLIP_HEADS"]

_CONTEXT_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


@dataclass(frozen=True)
class Architecture:
    family: str
    unet: UNetConfig
    vae: AutoencoderConfig


def detect_family(state_dict: dict) -> str:
    """"sd1", "sd2" or "sdxl" from the text-encoder key layout (then from the context width)."""
    for family in ("sdxl", "sd2", "sd1"):
        if all(any(k.startswith(p) for k in state_dict) for p in TEXT_PREFIXES[family]):
            return family
    unet = strip_prefix(state_dict, UNET_PREFIX)
    if not unet:
        raise CheckpointError(f"unsupported checkpoint: no UNet tensors under {UNET_PREFIX!r}; "
                              "this is not an original Stable Diffusion 1.x/2.x/XL checkpoint.")
    width = _context_dim(unet)
    if width not in _CONTEXT_WIDTHS:
        raise CheckpointError(f"unsupported architecture: no known text encoder keys and a context width of {width} "
                              f"(known: {sorted(_CONTEXT_WIDTHS)}); only Stable Diffusion 1.x/2.x/XL are supported.")
    return _CONTEXT_WIDTHS[width]


def _context_dim(unet: dict) -> int:
    widths = {v.shape[1] for k, v in unet.items() if k.endswith("attn2.to_k.weight")}
    if len(widths) != 1:
        raise CheckpointError(f"unsupported architecture: the UNet's cross-attention widths are {sorted(widths)}; "
                              "expected exactly one context width.")
    return widths.pop()


def _depth(unet: dict, block: str) -> int:
    return len(indices(unet, transformer_block(block)))


def _levels(unet: dict) -> list[list[str]]:
    """The input ResBlock names of each resolution level (levels end at a Downsample)."""
    levels, current = [], []
    for i in indices(unet, UNET_INPUT_BLOCK)[1:]:
        if f"input_blocks.{i}.0.op.weight" in unet:
            levels.append(current)
            current = []
        else:
            current.append(f"input_blocks.{i}")
    return levels + [current]


def unet_config_from_state_dict(unet: dict, family: str, pooled_dim: int | None = None) -> UNetConfig:
    """``UNetConfig`` from CompVis UNet tensors (prefix stripped) plus ``family``'s invisible settings."""
    conv_in = unet["input_blocks.0.0.weight"]
    levels = _levels(unet)
    if len({len(level) for level in levels}) != 1:
        raise CheckpointError("unsupported architecture: levels with different numbers of ResBlocks.")
    depths = []
    for level in levels:
        level_depths = {_depth(unet, block) for block in level}
        if len(level_depths) != 1:
            raise CheckpointError("unsupported architecture: different transformer depths within one level.")
        depths.append(level_depths.pop())
    model_channels = conv_in.shape[0]
    widths = [unet[f"{level[0]}.0.in_layers.2.weight"].shape[0] for level in levels]
    adm = unet["label_emb.0.0.weight"].shape[1] if "label_emb.0.0.weight" in unet else None
    return unet_preset(
        family, in_channels=conv_in.shape[1], out_channels=unet["out.2.weight"].shape[0],
        model_channels=model_channels, channel_mult=tuple(w // model_channels for w in widths),
        num_res_blocks=len(levels[0]), transformer_depth=tuple(depths),
        transformer_depth_middle=_depth(unet, "middle_block"), context_dim=_context_dim(unet),
        use_linear_in_transformer=any(v.ndim == 2 for k, v in unet.items() if k.endswith("proj_in.weight")),
        adm_in_channels=adm,
        addition_time_embed_dim=(adm - pooled_dim) // 6 if adm and pooled_dim else 256,
    )


def vae_config_from_state_dict(vae: dict) -> AutoencoderConfig:
    """``AutoencoderConfig`` from CompVis ``first_stage_model`` tensors (prefix stripped)."""
    ch = vae["encoder.conv_in.weight"].shape[0]
    levels = indices(vae, VAE_LEVEL)
    return AutoencoderConfig(
        in_channels=vae["encoder.conv_in.weight"].shape[1], out_ch=vae["decoder.conv_out.weight"].shape[0], ch=ch,
        ch_mult=tuple(vae[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in levels),
        num_res_blocks=len(indices(vae, VAE_LEVEL_0_RESBLOCK)),
        z_channels=vae["decoder.conv_in.weight"].shape[1], embed_dim=vae["quant_conv.weight"].shape[0] // 2,
    )


#: Attention heads of the released CLIP text towers, by width (64 channels per head): ViT-L/14 (SD 1.x,
#: SDXL's first), OpenCLIP ViT-H/14 (SD 2.x), OpenCLIP ViT-bigG/14 (SDXL's second).
RELEASED_CLIP_HEADS = {768: 12, 1024: 16, 1280: 20}


def clip_config_kwargs(text: dict, hidden_act: str, num_heads: int | None = None, where: str = "text encoder") -> dict:
    """``CLIPTextConfig`` arguments from transformers-layout CLIP tensors (``text_model.`` prefix optional).

    The head count is not in the weights (any divisor of the width fits them): ``num_heads`` when given
    (from the file's metadata), else the released tower of that width (:data:`RELEASED_CLIP_HEADS`);
    another width without ``num_heads`` is a :class:`CheckpointError`, never a guess.
    """
    text = {k.removeprefix("text_model."): v for k, v in text.items()}
    hidden = text["embeddings.token_embedding.weight"].shape[1]
    if num_heads is None:
        num_heads = RELEASED_CLIP_HEADS.get(hidden)
        if num_heads is None:
            raise CheckpointError(
                f"{where}: the CLIP text encoder is {hidden} wide, which no released model is "
                f"({sorted(RELEASED_CLIP_HEADS)}), and the file's metadata does not give its attention heads, "
                "which the weights cannot show; save the model with StableDiffusion.save_single_file (it records "
                "them as 'diffusion_notes.text.num_attention_heads'), or load its diffusers folder instead.")
    if num_heads < 1 or hidden % num_heads:
        raise CheckpointError(f"{where}: {num_heads} attention heads do not divide the text encoder's width "
                              f"{hidden}; the file's metadata is wrong.")
    kwargs = dict(
        vocab_size=text["embeddings.token_embedding.weight"].shape[0], hidden_size=hidden,
        max_position_embeddings=text["embeddings.position_embedding.weight"].shape[0],
        num_hidden_layers=len(indices(text, CLIP_LAYER)),
        intermediate_size=text["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_attention_heads=num_heads,
        hidden_act=hidden_act,
    )
    if "text_projection.weight" in text:
        kwargs["projection_dim"] = text["text_projection.weight"].shape[0]
    return kwargs


def detect_architecture(state_dict: dict) -> Architecture:
    """Family, UNet and VAE configuration of a full original checkpoint."""
    family = detect_family(state_dict)
    unet = strip_prefix(state_dict, UNET_PREFIX)
    vae = strip_prefix(state_dict, VAE_PREFIX)
    if not unet or not vae:
        missing = UNET_PREFIX if not unet else VAE_PREFIX
        raise CheckpointError(f"incomplete checkpoint: no tensors under {missing!r}; a full Stable Diffusion "
                              "checkpoint holds the UNet, the VAE and the text encoder(s).")
    projection = state_dict.get(TEXT_PREFIXES["sdxl"][1] + "text_projection")  # bigG's
    pooled_dim = projection.shape[1] if projection is not None else None
    return Architecture(family, unet_config_from_state_dict(unet, family, pooled_dim), vae_config_from_state_dict(vae))


# --------------------------------------------------------------------------------------------
# Original YAML (v1-inference.yaml, v2-inference-v.yaml, sd_xl_base.yaml)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OriginalConfig:
    """What an original YAML adds to the weights: heads, parameterisation, latent scale, schedule."""

    prediction_type: str = "eps"
    scale_factor: float | None = None
    linear_start: float = SD_BETA_RANGE[0]
    linear_end: float = SD_BETA_RANGE[1]
    timesteps: int = 1000
    unet_params: dict | None = None


#: CompVis ``parameterization`` values this package can sample ("x0" models are not Stable Diffusion).
_PARAMETERIZATIONS = {"eps": "eps", "v": "v"}


def read_original_yaml(path) -> OriginalConfig:
    """Parse a CompVis / sgm inference YAML (``model.params``).

    Every problem is one :class:`CheckpointError` naming the file and the key: unreadable or non-text
    files, YAML syntax errors (with the line), a document that is not a mapping, values of the wrong
    type, and a ``parameterization`` other than eps or v (refused, never mapped to eps).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such YAML file" + (" (it is a folder)" if path.is_dir() else "") + ".")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a text file, so not a YAML config; give the model's inference .yaml "
                              "(v1-inference.yaml, v2-inference-v.yaml, ...).") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CheckpointError(f"{path}: invalid YAML{where} ({problem}); fix the file or fetch it again.") from None
    if document is None:
        document = {}
    params = _mapping(path, "the document", document)
    params = _mapping(path, "model", params.get("model", {}))
    params = _mapping(path, "model.params", params.get("params", {}))
    network_key = "model.params.unet_config" if "unet_config" in params else "model.params.network_config"
    network = _mapping(path, network_key, params.get("unet_config") or params.get("network_config") or {})
    unet = network.get("params")
    if unet is not None:
        unet = _mapping(path, network_key + ".params", unet)
        for key in ("in_channels", "out_channels", "model_channels", "context_dim", "num_res_blocks", "num_heads",
                    "num_head_channels"):
            value = unet.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value == 0
                                      or value < -1 or value == -1 and key not in ("num_heads", "num_head_channels")):
                raise CheckpointError(f"{path}: {network_key}.params.{key}={value!r} must be a positive whole number"
                                      + (" (or -1: unused)." if key.startswith("num_head") else "."))
    parameterization = params.get("parameterization", "eps")
    if parameterization not in _PARAMETERIZATIONS:
        raise CheckpointError(f"{path}: model.params.parameterization={parameterization!r} is not supported; "
                              "Stable Diffusion models use 'eps' or 'v'.")
    scale_factor = params.get("scale_factor")
    if scale_factor is not None and (isinstance(scale_factor, bool) or not isinstance(scale_factor, (int, float))
                                     or not 0 < scale_factor < float("inf")):
        raise CheckpointError(f"{path}: model.params.scale_factor={scale_factor!r} must be a positive number "
                              "(0.18215 for SD 1.x/2.x, 0.13025 for SDXL).")
    config = OriginalConfig(
        prediction_type=_PARAMETERIZATIONS[parameterization],
        scale_factor=None if scale_factor is None else float(scale_factor),
        linear_start=params.get("linear_start", SD_BETA_RANGE[0]),
        linear_end=params.get("linear_end", SD_BETA_RANGE[1]), timesteps=params.get("timesteps", 1000), unet_params=unet,
    )
    from .building import check_schedule_values

    check_schedule_values(path, config.timesteps, config.linear_start, config.linear_end,
                          tuple(f"model.params.{k}" for k in ("timesteps", "linear_start", "linear_end")))
    return config


def _mapping(path: Path, key: str, value) -> dict:
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: {key} must be a mapping of settings, got a {type(value).__name__} "
                              f"({str(value)[:40]!r}); is this the model's inference YAML?")
    return value


def apply_metadata_heads(config: UNetConfig, num_heads: int | None, num_head_channels: int | None) -> UNetConfig:
    """The UNet heads a file's metadata records (``checkpoints.metadata``), replacing the family's; unchanged
    when the metadata says nothing."""
    if num_heads is None and num_head_channels is None:
        return config
    return _with_heads(config, -1 if num_heads is None else num_heads,
                       -1 if num_head_channels is None else num_head_channels, "the file's metadata")


def apply_yaml_unet(config: UNetConfig, unet_params: dict | None, path) -> UNetConfig:
    """The heads settings of a YAML ``unet_config``, after checking it describes these weights.

    A YAML that names neither ``num_heads`` nor ``num_head_channels`` keeps the heads already known
    (from the metadata, else the family's); one that names one uses it (the other becomes -1, unused).
    """
    if not unet_params:
        return config
    for key in ("in_channels", "model_channels", "context_dim", "num_res_blocks"):
        if key in unet_params and unet_params[key] != getattr(config, key):
            raise CheckpointError(f"{path}: {key}={unet_params[key]} but the weights have {getattr(config, key)}; "
                                  "this YAML describes another model.")
    if "num_heads" not in unet_params and "num_head_channels" not in unet_params:
        return config
    return _with_heads(config, unet_params.get("num_heads", -1), unet_params.get("num_head_channels", -1), path)


def _with_heads(config: UNetConfig, num_heads: int, num_head_channels: int, source) -> UNetConfig:
    """``config`` with these heads, refused with a CheckpointError when they cannot split its widths."""
    try:
        return replace(config, num_heads=num_heads, num_head_channels=num_head_channels)
    except ValueError as exc:  # UNetConfig's own check: heads unset, or not dividing a width
        raise CheckpointError(f"{source}: num_heads={num_heads}, num_head_channels={num_head_channels} do not fit "
                              f"these weights ({exc}).") from exc


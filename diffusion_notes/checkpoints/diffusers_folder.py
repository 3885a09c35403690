"""The diffusers folder layout, read and written: ``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/`` (SDXL also ``text_encoder_2/``), ``tokenizer/`` (``tokenizer_2/``), ``scheduler/``.

Counterparts: diffusers ``DiffusionPipeline.from_pretrained`` / ``save_pretrained``. The weight
layouts are converted by :mod:`diffusion_notes.checkpoints.diffusers_layout`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.config import SCALE_FACTORS, TEXT_SPECS, StableDiffusionConfig
from ..models.text import PromptEncoder
from ..models.unet import UNetModel
from ..models.vae import AutoencoderKL
from ..precision import default_dtype
from ..schedules import DIFFUSERS_NAMES, SD_BETA_RANGE, NoiseSchedule
from . import diffusers_layout as layout
from .background_import import import_in_background
from .building import (DIFFUSERS_PREDICTION, LoadedParts, build, build_clip, check_schedule_values, place,
                       prediction_name)
from .hub import resolve_folder
from .io import load_state_dict, refuse_existing, save_state_dict
from .tokenizers import load_tokenizer

__all__ = ["load_diffusers_folder", "save_diffusers_folder", "WEIGHT_NAMES"]

#: The weight files a diffusers part folder may hold, in the order they are looked for.
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                "model.fp16.safetensors", "diffusion_pytorch_model.bin", "pytorch_model.bin")


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def load_diffusers_folder(folder_or_hub_id, torch_dtype: torch.dtype | None = None, device=None,
                          prediction_type: str | None = None, prepack: bool | None = None) -> LoadedParts:
    """The parts of a ``StableDiffusion``, on ``device`` in ``torch_dtype``, from a diffusers folder or hub id;
    see :meth:`StableDiffusion.from_pretrained <diffusion_notes.stable_diffusion.StableDiffusion.from_pretrained>`."""
    root = resolve_folder(folder_or_hub_id)
    if root.is_file():
        raise CheckpointError(f"{root}: a file, not a diffusers folder; load single files with from_single_file "
                              "(--ckpt on the command line).")
    family = _folder_family(read_json(root / "model_index.json"), root)
    unet_path, vae_path = root / "unet" / "config.json", root / "vae" / "config.json"
    unet_config = _parsed(unet_path, layout.unet_config_from_diffusers, read_json(unet_path))
    vae_json = read_json(vae_path)
    vae_config = _parsed(vae_path, layout.vae_config_from_diffusers, vae_json)
    scheduler_path = root / "scheduler" / "scheduler_config.json"
    scheduler = read_json(scheduler_path)
    prediction = prediction_type or scheduler.get("prediction_type", "epsilon")
    if prediction_type is None and prediction not in ("epsilon", "v_prediction"):
        raise CheckpointError(f"{scheduler_path}: prediction_type={prediction!r} is not supported; Stable Diffusion "
                              "models predict 'epsilon' or 'v_prediction'.")
    scale = vae_json.get("scaling_factor", SCALE_FACTORS[family])
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
        raise CheckpointError(f"{vae_path}: scaling_factor={scale!r} must be a positive number (0.18215 for SD 1/2).")
    config = StableDiffusionConfig(family, unet_config, vae_config, prediction_name(prediction), float(scale))
    dtype = torch_dtype or default_dtype(device)  # weights are converted as read (checkpoints.io)
    unet_weights, vae_weights = weights_file(root / "unet"), weights_file(root / "vae")
    importing = import_in_background()  # transformers' CLIP, on a second core while the weights are read
    unet_sd = _parsed(unet_weights, lambda w: layout.unet_from_diffusers(w, unet_config),
                      load_state_dict(unet_weights, dtype=dtype), unet_path)
    vae_sd = _parsed(vae_weights, lambda w: layout.vae_from_diffusers(w, vae_config),
                     load_state_dict(vae_weights, dtype=dtype), vae_path)
    if importing is not None:
        importing.join()
    unet = build(UNetModel, unet_config, unet_sd, "UNet", "unet/", str(unet_path))
    vae = build(AutoencoderKL, vae_config, vae_sd, "VAE", "vae/", str(vae_path))
    parts = LoadedParts(config, unet, vae, _folder_prompt_encoder(root, family, dtype),
                        _schedule_from_scheduler(scheduler, scheduler_path))
    return place(parts, device, dtype, prepack)


def _parsed(path: Path, parse, data, config: Path | None = None):
    """``parse(data)``, a missing key or a value of the wrong type becoming a CheckpointError naming ``path``
    (and, for weights, the ``config`` they were read against)."""
    try:
        return parse(data)
    except KeyError as exc:
        if config is not None:
            raise CheckpointError(f"{path}: has no tensor {exc.args[0]!r}, which {config} implies; the config "
                                  "contradicts the weights (or the weights are incomplete).") from None
        raise CheckpointError(f"{path}: missing key {exc.args[0]!r}; the config is incomplete, fetch it again.") from None
    except (TypeError, ValueError, ZeroDivisionError, AttributeError, *_library_config_errors()) as exc:
        raise CheckpointError(f"{path}: a value has the wrong type or is impossible ({str(exc).splitlines()[0]}); "
                              "fix or fetch the file again.") from None


def _library_config_errors() -> tuple:
    """transformers 5 validates configs through huggingface_hub's strict dataclasses (not ValueErrors)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # older huggingface_hub: plain TypeErrors
        return ()
    return (StrictDataclassError,)


def weights_file(folder: Path) -> Path:
    """The weights of one part folder (``unet/``, ``vae/``, ``text_encoder/``), by :data:`WEIGHT_NAMES`."""
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no weights file ({', '.join(WEIGHT_NAMES[:2])} or .bin); "
                          "the diffusers folder is incomplete.")


def read_json(path: Path) -> dict:
    """A diffusers config file; CheckpointError naming it when it is missing, malformed or not an object."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a diffusers folder needs it (is this the model's root folder?).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a text file; a diffusers config is JSON text, fetch it again.") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                              "fix or fetch the file again.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(data).__name__}, not an object of settings; fetch it again.")
    return data


def _folder_family(model_index: dict, root: Path) -> str:
    """sdxl when there is a second text encoder, else sd1/sd2 by the context width of the UNet."""
    if model_index.get("_class_name", "").startswith("StableDiffusionXL") or "text_encoder_2" in model_index:
        return "sdxl"
    if "text_encoder" not in model_index:
        raise CheckpointError(f"{root}: model_index.json describes {model_index.get('_class_name')!r}, "
                              "not a Stable Diffusion 1.x/2.x/XL pipeline.")
    text_config = read_json(root / "text_encoder" / "config.json")
    # OpenCLIP ViT-H (SD 2.x) uses exact gelu; OpenAI CLIP ViT-L (SD 1.x) quick_gelu.
    return "sd2" if text_config.get("hidden_act") == "gelu" else "sd1"


def _schedule_from_scheduler(scheduler: dict, path: Path) -> NoiseSchedule:
    name = DIFFUSERS_NAMES.get(str(scheduler.get("beta_schedule", "scaled_linear")))
    if name is None:
        raise CheckpointError(f"{path}: unsupported beta_schedule {scheduler.get('beta_schedule')!r}; use one of "
                              f"{', '.join(DIFFUSERS_NAMES)}.")
    steps = scheduler.get("num_train_timesteps", 1000)
    start, end = scheduler.get("beta_start", SD_BETA_RANGE[0]), scheduler.get("beta_end", SD_BETA_RANGE[1])
    check_schedule_values(path, steps, start, end, ("num_train_timesteps", "beta_start", "beta_end"))
    return NoiseSchedule.from_name(name, steps, linear_start=start, linear_end=end)


def _folder_prompt_encoder(root: Path, family: str, dtype: torch.dtype | None = None) -> PromptEncoder:
    from transformers import CLIPTextConfig

    specs = TEXT_SPECS[family]
    tokenizers, encoders = [], []
    for index, spec in enumerate(specs):
        suffix = f"_{index + 1}" if index else ""
        folder = root / f"text_encoder{suffix}"
        config_path = folder / "config.json"
        config = _parsed(config_path, lambda data: CLIPTextConfig(**data), read_json(config_path))
        weights = load_state_dict(weights_file(folder), dtype=dtype)
        encoders.append(_parsed(config_path, lambda w: build_clip(config, w, spec.pooled, "text encoder",
                                                                  f"text_encoder{suffix}/", str(config_path)), weights))
        tokenizers.append(load_tokenizer(root / f"tokenizer{suffix}"))
        tokenizers[-1].model_max_length = config.max_position_embeddings  # 77 for every release
    return PromptEncoder(tokenizers, encoders, specs)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def save_diffusers_folder(sd, folder, overwrite: bool = False) -> None:
    """Write ``sd`` in the diffusers folder layout (readable by diffusers' ``StableDiffusion(XL)Pipeline``)."""
    root = Path(folder)
    refuse_existing(root, overwrite)
    # Everything that can refuse (unsupported configs or schedules) runs before the first file is written.
    unet_json = layout.unet_config_to_diffusers(sd.config.unet)
    vae_json = layout.vae_config_to_diffusers(sd.config.vae, sd.scale_factor)
    scheduler_json, model_index = _scheduler_json(sd), _model_index(sd.family)
    _write_part(root / "unet", layout.unet_to_diffusers(sd.unet.state_dict(), sd.config.unet),
                unet_json, "diffusion_pytorch_model.safetensors")
    _write_part(root / "vae", layout.vae_to_diffusers(sd.vae.state_dict(), sd.config.vae),
                vae_json, "diffusion_pytorch_model.safetensors")
    for index, (encoder, tokenizer) in enumerate(zip(sd.text_encoders, sd.tokenizers)):
        suffix = f"_{index + 1}" if index else ""
        encoder.save_pretrained(root / f"text_encoder{suffix}")
        tokenizer.save_pretrained(root / f"tokenizer{suffix}")
    _write_json(root / "scheduler" / "scheduler_config.json", scheduler_json)
    _write_json(root / "model_index.json", model_index)


def _write_part(folder: Path, state_dict: dict, config: dict, name: str) -> None:
    save_state_dict(state_dict, folder / name, overwrite=True)
    _write_json(folder / "config.json", config)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _scheduler_json(sd) -> dict:
    # scaled_linear betas start and end exactly at linear_start and linear_end.
    schedule = sd.schedule
    steps, start, end = schedule.num_timesteps, float(schedule.betas[0]), float(schedule.betas[-1])
    rebuilt = NoiseSchedule.from_name("scaled_linear", steps, linear_start=start, linear_end=end)
    if not torch.allclose(rebuilt.betas, schedule.betas, rtol=1e-9, atol=0):
        raise CheckpointError("this model's noise schedule is not a scaled_linear one; diffusers' scheduler "
                              "config cannot express it, so save with save_single_file instead.")
    return {"_class_name": "DDIMScheduler", "num_train_timesteps": steps, "beta_start": start, "beta_end": end,
            "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
            "steps_offset": 1, "prediction_type": DIFFUSERS_PREDICTION[sd.prediction_type]}


def _model_index(family: str) -> dict:
    xl = family == "sdxl"
    index = {"_class_name": "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"]}
    if xl:
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"])
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    return index

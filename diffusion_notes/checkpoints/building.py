"""Building networks from loaded tensors without allocating their weights twice.

Every network is built on the ``meta`` device and receives the loaded tensors with
``load_state_dict(assign=True)``; the readers have already converted them to the wanted dtype, one
tensor at a time (``checkpoints.io.load_state_dict(dtype=)``), so that copy is the one kept. Shared
by the single-file and the diffusers-folder readers, which return :class:`LoadedParts` placed by
:func:`place`; ``StableDiffusion.from_single_file`` / ``from_pretrained`` assemble the model from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CheckpointError, SettingsError
from ..models.config import StableDiffusionConfig
from ..models.prepacked import prepack_convolutions
from ..models.text import PromptEncoder, materialize_position_ids
from ..models.unet import UNetModel
from ..models.vae import AutoencoderKL
from ..schedules import NoiseSchedule

__all__ = ["LoadedParts", "check_schedule_values", "load_into", "build", "place", "build_clip", "clip_key",
           "clip_state_dict", "token_ids", "prediction_name", "DIFFUSERS_PREDICTION"]


@dataclass
class LoadedParts:
    """What a checkpoint reader returns: the parts of a ``StableDiffusion``, in its constructor's order.

    diffusers' ``DiffusionPipeline.from_pretrained`` likewise loads each component, then calls the
    pipeline class with them; CompVis's ``LatentDiffusion`` holds the same parts as ``model``
    (``diffusion_model``), ``first_stage_model``, ``cond_stage_model`` and its ``register_schedule`` buffers.
    """

    config: StableDiffusionConfig
    unet: UNetModel
    vae: AutoencoderKL
    prompt_encoder: PromptEncoder
    schedule: NoiseSchedule

_PREDICTION_NAMES = {"eps": "eps", "epsilon": "eps", "v": "v", "v_prediction": "v"}
#: Our prediction-type names -> diffusers' scheduler ``prediction_type``.
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction"}


def load_into(module: nn.Module, state_dict: dict, what: str, prefix: str, config_source: str | None = None,
              file_name=None) -> nn.Module:
    """``load_state_dict(assign=True)`` into a meta-device module, with one-line errors.

    Every tensor is checked first: present, expected, floating point where the module's is, and of
    the module's shape (the error names the tensor and both shapes, and ``config_source``, the file
    the architecture came from, when it was not inferred from the tensors themselves). ``file_name(name)``
    gives a tensor's name as the file spells it, when the layout was converted (default: ``prefix + name``).
    """
    file_name = file_name or (lambda name: prefix + name)
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing:
        raise CheckpointError(f"checkpoint is missing {len(missing)} of {len(expected)} {what} tensors under "
                              f"{prefix!r} (e.g. {prefix}{missing[0]}); the file is incomplete or not this model.")
    if unexpected:
        raise CheckpointError(f"checkpoint has {len(unexpected)} {what} tensors under {prefix!r} that this "
                              f"architecture lacks (e.g. {prefix}{unexpected[0]}); check the config/YAML.")
    source = f"the config {config_source}" if config_source else "the architecture read from the other tensors"
    for name, slot in expected.items():
        given = state_dict[name]
        if not isinstance(given, torch.Tensor):
            raise CheckpointError(f"{what} entry {file_name(name)} is a {type(given).__name__}, not a tensor.")
        if slot.is_floating_point() and not given.is_floating_point():
            raise CheckpointError(f"{what} tensor {file_name(name)} holds {str(given.dtype).removeprefix('torch.')}, "
                                  "not floating-point weights; the file is damaged or not this model.")
        if tuple(given.shape) != tuple(slot.shape):
            raise CheckpointError(f"{what} tensor {file_name(name)} has shape {tuple(given.shape)} but {source} needs "
                                  f"{tuple(slot.shape)}; the file is damaged, or the config describes another model.")
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def place(model, device, dtype: torch.dtype, prepack: bool | None):
    """Move freshly built networks (``model``: :class:`LoadedParts` or a ``StableDiffusion``, anything with
    ``unet``, ``vae`` and ``prompt_encoder``) to ``device`` / ``dtype``; then, when ``prepack`` is True,
    or None and the networks are on the CPU, prepack the UNet's and VAE's convolutions for oneDNN
    (:mod:`diffusion_notes.models.prepacked`: the same weights, reordered once instead of at every
    call; the model is then for inference). The networks are ours, just built: nothing of the caller's
    changes. Returns ``model``."""
    for network in (model.unet, model.vae, model.prompt_encoder):
        network.to(device=device, dtype=dtype)
    if prepack is None:  # read from a Linear weight, always a parameter (as StableDiffusion.device)
        prepack = model.unet.time_embed[0].weight.device.type == "cpu"
    if prepack:
        prepack_convolutions(model.unet)
        prepack_convolutions(model.vae)
    return model


def build(cls, config, state_dict: dict, what: str, prefix: str, config_source: str | None = None) -> nn.Module:
    """``cls(config)`` on the meta device, then :func:`load_into` it."""
    with torch.device("meta"):
        module = cls(config)
    return load_into(module, state_dict, what, prefix, config_source)


def build_clip(config, state_dict: dict, with_projection: bool, what: str, prefix: str,
               config_source: str | None = None, file_name=None) -> nn.Module:
    """A transformers CLIP text model from its ``CLIPTextConfig`` and transformers-layout weights."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with torch.device("meta"):
        model = cls(config)
    # transformers >= 5.6 saves CLIPTextModel without the "text_model." level; accept both spellings.
    wrapped = hasattr(model, "text_model")
    state_dict = {clip_key(k, wrapped): v for k, v in state_dict.items() if "position_ids" not in k}
    if not with_projection:
        state_dict.pop("text_projection.weight", None)
    load_into(model, state_dict, what, prefix, config_source,
              file_name and (lambda name: file_name(clip_key(name, True))))
    materialize_position_ids(model)
    return model


def clip_key(key: str, wrapped: bool) -> str:
    """A CLIP weight name with (``wrapped``) or without transformers' ``text_model.`` level."""
    bare = key.removeprefix("text_model.")
    if bare.startswith("text_projection"):
        return bare
    return "text_model." + bare if wrapped else bare


def clip_state_dict(encoder: nn.Module) -> dict:
    """The encoder's weights with transformers' classic ``text_model.`` names."""
    return {clip_key(k, True): v for k, v in encoder.state_dict().items() if "position_ids" not in k}


def token_ids(tokenizer) -> dict:
    """The special-token ids a ``CLIPTextConfig`` needs from its tokenizer."""
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def prediction_name(name: str) -> str:
    """"eps" or "v" from our or diffusers' spelling (``epsilon``, ``v_prediction``)."""
    if not isinstance(name, str) or name not in _PREDICTION_NAMES:
        raise SettingsError("prediction_type", f"prediction_type={name!r}: use 'eps' or 'v' (diffusers: 'epsilon', "
                            "'v_prediction').")
    return _PREDICTION_NAMES[name]


def check_schedule_values(source, timesteps, start, end, keys=("timesteps", "linear_start", "linear_end")) -> None:
    """CheckpointError naming ``source`` and the key unless the noise schedule's values make sense:
    an integer number of training steps >= 2 and betas with 0 < start < end < 1 (SD: 1000, 0.00085, 0.012)."""
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 2:
        raise CheckpointError(f"{source}: {keys[0]}={timesteps!r} must be a whole number of training steps >= 2 "
                              "(1000 for Stable Diffusion).")
    for key, value in zip(keys[1:], (start, end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise CheckpointError(f"{source}: {key}={value!r} must be a number between 0 and 1 "
                                  "(Stable Diffusion: 0.00085 and 0.012).")
    if not start < end:
        raise CheckpointError(f"{source}: {keys[1]}={start!r} must be smaller than {keys[2]}={end!r}.")

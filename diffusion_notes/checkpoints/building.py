"""Building networks from loaded tensors without allocating their weights twice.

Every network is built on the ``meta`` device and receives the memory-mapped tensors with
``load_state_dict(assign=True)`` (a dtype cast, e.g. of an fp16 file to the default float32, makes
the one copy that is kept). Shared by the single-file and the diffusers-folder readers.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.text import materialize_position_ids

__all__ = ["load_into", "build", "build_clip", "clip_key", "clip_state_dict", "token_ids", "prediction_name",
           "DIFFUSERS_PREDICTION"]

_PREDICTION_NAMES = {"eps": "eps", "epsilon": "eps", "v": "v", "v_prediction": "v"}
#: Our prediction-type names -> diffusers' scheduler ``prediction_type``.
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction"}


def load_into(module: nn.Module, state_dict: dict, what: str, prefix: str) -> nn.Module:
    """``load_state_dict(assign=True)`` into a meta-device module, with one-line errors."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing:
        raise CheckpointError(f"checkpoint is missing {len(missing)} of {len(expected)} {what} tensors under "
                              f"{prefix!r} (e.g. {prefix}{missing[0]}); the file is incomplete or not this model.")
    if unexpected:
        raise CheckpointError(f"checkpoint has {len(unexpected)} {what} tensors under {prefix!r} that this "
                              f"architecture lacks (e.g. {prefix}{unexpected[0]}); check the config/YAML.")
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def build(cls, config, state_dict: dict, what: str, prefix: str) -> nn.Module:
    """``cls(config)`` on the meta device, then :func:`load_into` it."""
    with torch.device("meta"):
        module = cls(config)
    return load_into(module, state_dict, what, prefix)


def build_clip(config, state_dict: dict, with_projection: bool, what: str, prefix: str) -> nn.Module:
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
    load_into(model, state_dict, what, prefix)
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
    if name not in _PREDICTION_NAMES:
        raise ValueError(f"prediction_type={name!r}: use 'eps' or 'v' (diffusers: 'epsilon', 'v_prediction').")
    return _PREDICTION_NAMES[name]

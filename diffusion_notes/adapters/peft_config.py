r"""PEFT's LoRA configuration: the scale :math:`\alpha / r` of each layer of a diffusers / PEFT file.

A PEFT ``LoraConfig`` (Hu et al. 2021's scale, Sec. 4.1) stores the scale outside the tensors: ``r``
and ``lora_alpha`` for every layer, ``rank_pattern`` / ``alpha_pattern`` for the layers whose names end
with a pattern (PEFT ``get_pattern_key``: ``re.match(rf"(.*\.)?({pattern})$", module)``), and
``use_rslora`` (rank-stabilised LoRA, Kalajdzievski 2023: :math:`\alpha / \sqrt r` instead of
:math:`\alpha / r`). A file of such a LoRA carries it in one of two places:

* diffusers (``save_lora_weights(..., unet_lora_adapter_metadata=config.to_dict())``, diffusers >= 0.34):
  the safetensors ``__metadata__`` entry ``"lora_adapter_metadata"``, a JSON table whose keys carry the
  component: ``"unet.r"``, ``"unet.lora_alpha"``, ``"text_encoder.alpha_pattern"``, ...
  (diffusers ``LORA_ADAPTER_METADATA_KEY``, read back by ``_load_sft_state_dict_metadata``);
* PEFT's ``save_pretrained``: an ``adapter_config.json`` beside the weights, one config for the file.

Without either, a PEFT file has :math:`\alpha = r` (scale 1), as diffusers assumes. Counterparts:
diffusers ``utils/peft_utils.py`` (``_create_lora_config``), PEFT ``tuners/lora/model.py``
(``_create_and_replace``: ``r_key``, ``alpha_key``) and ``LoraLayer.update_layer`` (``scaling``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..checkpoints.safetensors_header import read_safetensors_header, starts_like_safetensors
from ..errors import CheckpointError

__all__ = ["METADATA_KEY", "CONFIG_NAME", "read_peft_config", "peft_alpha"]

#: diffusers' ``LORA_ADAPTER_METADATA_KEY``.
METADATA_KEY = "lora_adapter_metadata"
#: PEFT's ``CONFIG_NAME``.
CONFIG_NAME = "adapter_config.json"
#: The whole file (an ``adapter_config.json``), as opposed to one component's config.
ALL = "*"


def read_peft_config(path) -> dict[str, dict] | None:
    """``{component: LoraConfig dict}`` (component ``"unet"``, ``"text_encoder"``, ``"text_encoder_2"``,
    or ``"*"`` for a whole-file ``adapter_config.json``) of the LoRA file at ``path``; None when it has none."""
    path = Path(path)
    with open(path, "rb") as f:
        is_safetensors = starts_like_safetensors(f.read(16))
    raw = read_safetensors_header(path).metadata.get(METADATA_KEY) if is_safetensors else None
    if raw:
        try:
            flat = json.loads(raw)
        except ValueError:
            raise CheckpointError(f"{path}: its {METADATA_KEY!r} metadata is not JSON.") from None
        configs: dict[str, dict] = {}
        for key, value in flat.items():
            component, _, name = key.partition(".")
            configs.setdefault(component, {})[name] = value
        return configs
    beside = path.parent / CONFIG_NAME
    if beside.is_file():
        try:
            return {ALL: json.loads(beside.read_text())}
        except ValueError:
            raise CheckpointError(f"{beside}: not a JSON file.") from None
    return None


def _pattern_value(patterns: dict, module: str):
    """PEFT ``get_pattern_key``: the value of the first pattern that ends ``module`` at a dot, else None."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return None


def peft_alpha(config: dict, module: str, rank: int, where: str) -> float:
    r"""The :math:`\alpha` that makes :math:`\alpha / r` (``rank`` = the rows of ``lora_A``) PEFT's scaling of
    ``module``: ``alpha_pattern`` or ``lora_alpha``, times :math:`\sqrt r` under ``use_rslora``
    (whose scaling is :math:`\alpha / \sqrt r`). The config's rank (``rank_pattern`` or ``r``) must be
    the factors'; DoRA (``use_dora``) is refused. ``where``: the layer, for the error message."""
    if config.get("use_dora"):
        raise CheckpointError(f"LoRA layer {where!r}: its config has use_dora (DoRA, weight-decomposed LoRA); "
                              "not supported.")
    stated = _pattern_value(config.get("rank_pattern"), module)
    stated = config.get("r", 8) if stated is None else stated  # PEFT LoraConfig's defaults: r = lora_alpha = 8
    if stated != rank:
        raise CheckpointError(f"LoRA layer {where!r}: its config says rank {stated}, its factors have rank {rank}.")
    alpha = _pattern_value(config.get("alpha_pattern"), module)
    alpha = config.get("lora_alpha", 8) if alpha is None else alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise CheckpointError(f"LoRA layer {where!r}: its config's lora_alpha {alpha!r} is not a finite number.")
    return float(alpha) * (math.sqrt(rank) if config.get("use_rslora") else 1.0)

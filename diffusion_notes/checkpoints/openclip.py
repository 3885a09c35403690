r"""OpenCLIP text-tower weights <-> transformers ``CLIPTextModel(WithProjection)`` weights.

Stable Diffusion 2.x conditions on OpenCLIP ViT-H/14's text tower, stored in the original
checkpoints under ``cond_stage_model.model.``; SDXL adds OpenCLIP ViT-bigG/14 under
``conditioner.embedders.1.model.``. Both use open_clip's ``TextTransformer`` layout, which
computes (open_clip ``CLIP.encode_text``)

.. math::

    x_0 = E[\text{ids}] + P, \qquad
    x_{l+1} = y_l + \mathrm{MLP}(\mathrm{LN}_2(y_l)),\quad y_l = x_l + \mathrm{Attn}_\text{causal}(\mathrm{LN}_1(x_l)),

    \text{pooled} = \mathrm{LN}_\text{final}(x_L)[\arg\max \text{ids}]\; W_\text{proj}.

transformers' ``CLIPTextModel`` computes the same thing under other names:

=======================================================  ====================================================
open_clip                                                transformers
=======================================================  ====================================================
``token_embedding.weight``                               ``text_model.embeddings.token_embedding.weight``
``positional_embedding``                                 ``text_model.embeddings.position_embedding.weight``
``transformer.resblocks.N.ln_1`` / ``ln_2``              ``text_model.encoder.layers.N.layer_norm1`` / ``2``
``transformer.resblocks.N.attn.in_proj_weight`` (3d, d)  ``...layers.N.self_attn.{q,k,v}_proj.weight`` (d, d)
``transformer.resblocks.N.attn.in_proj_bias`` (3d,)      ``...layers.N.self_attn.{q,k,v}_proj.bias`` (d,)
``transformer.resblocks.N.attn.out_proj``                ``...layers.N.self_attn.out_proj``
``transformer.resblocks.N.mlp.c_fc`` / ``c_proj``        ``...layers.N.mlp.fc1`` / ``fc2``
``ln_final``                                             ``text_model.final_layer_norm``
``text_projection`` (d, p), used as ``x @ W``            ``text_projection.weight`` (p, d), an ``nn.Linear``
=======================================================  ====================================================

Two conventions carry the maths: ``nn.MultiheadAttention`` (which open_clip uses) stacks the
query, key and value projections as the rows ``[W_q; W_k; W_v]`` of one fused matrix, and an
``nn.Linear`` stores the transpose of the matrix it right-multiplies by.

Which layers a pipeline uses
----------------------------
Conversion keeps every layer; choosing a hidden state is the caller's job:

* **SD 2.x** conditions on the *penultimate* layer passed through ``ln_final``
  (``FrozenOpenCLIPEmbedder(layer="penultimate")``). diffusers' SD2 folders get this by storing
  only 23 of ViT-H's 24 layers and using ``last_hidden_state``; with all 24 converted, the same
  tensor is ``final_layer_norm(hidden_states[-2])``.
* **SDXL** uses bigG's penultimate ``hidden_states[-2]`` *without* ``ln_final`` for
  cross-attention, and the full-depth pooled projection for its added conditioning.

Pooling: open_clip pools at ``argmax(ids)``, the position of the end-of-text token because it has
the largest id. transformers pools at the first end-of-text token, which is the same position as
long as ``eos_token_id = vocab_size - 1``: :func:`openclip_text_config` sets it so, and the loader takes
it from the CLIP tokenizer, whose end-of-text token is the last of its 49408 ids.

Counterpart: diffusers ``loaders/single_file_utils.py`` ``convert_open_clip_checkpoint`` (one
direction only; it also drops SD2's last layer and ``text_projection``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .io import CheckpointError

__all__ = ["openclip_to_transformers", "transformers_to_openclip", "openclip_text_config"]

# open_clip name -> transformers name, outside the residual blocks.
_TOP_LEVEL = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
# open_clip name -> transformers name, inside residual block N.
_BLOCK = {
    f"{oc}.{p}": f"{hf}.{p}"
    for oc, hf in {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }.items()
    for p in ("weight", "bias")
}
_FUSED_QKV = {"attn.in_proj_weight": "weight", "attn.in_proj_bias": "bias"}
_QKV = ("q", "k", "v")  # nn.MultiheadAttention's row order in in_proj_weight

_OPENCLIP_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_TRANSFORMERS_BLOCK = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)")
_TRANSFORMERS_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)")

# Stored beside the text tower but not part of it: the image tower, the contrastive temperature,
# open_clip's causal-mask buffer and transformers' position_ids buffer (both rebuilt at init).
_OPENCLIP_IGNORED = ("visual.", "logit_scale", "attn_mask")
_TRANSFORMERS_IGNORED = ("vision_model.", "visual_projection.", "logit_scale", "text_model.embeddings.position_ids")


def openclip_to_transformers(state_dict: Mapping[str, torch.Tensor], *, prefix: str = "") -> dict[str, torch.Tensor]:
    """transformers ``CLIPTextModelWithProjection`` weights from the open_clip text tower under ``prefix``.

    ``prefix`` is where the tower sits in ``state_dict``: ``"cond_stage_model.model."`` (SD 2.x) or
    ``"conditioner.embedders.1.model."`` (SDXL); keys outside it are skipped, and under it the image
    tower, ``logit_scale`` and ``attn_mask`` are ignored. Any other unknown key raises
    :class:`CheckpointError` rather than being silently lost. The fused ``in_proj`` is split into
    q, k, v views (no copy); ``text_projection`` is transposed. For a ``CLIPTextModel`` (no
    projection), leave out ``text_projection.weight``.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if not name.startswith(_OPENCLIP_IGNORED):
            converted.update(_openclip_entry(name, tensor, prefix))
    if not converted:
        raise CheckpointError(f"no OpenCLIP text-tower weights under the prefix {prefix!r}; check the prefix.")
    return converted


def _openclip_entry(name: str, tensor: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    if name in _TOP_LEVEL:
        return {_TOP_LEVEL[name]: tensor}
    if name == "text_projection":
        return {"text_projection.weight": tensor.T.contiguous()}
    match = _OPENCLIP_BLOCK.fullmatch(name)
    if match:
        layer, rest = match.groups()
        base = f"text_model.encoder.layers.{layer}."
        if rest in _BLOCK:
            return {base + _BLOCK[rest]: tensor}
        if rest in _FUSED_QKV:
            parts = tensor.chunk(3, dim=0)
            return {f"{base}self_attn.{p}_proj.{_FUSED_QKV[rest]}": t for p, t in zip(_QKV, parts)}
    raise CheckpointError(f"{prefix}{name}: not an OpenCLIP text-tower key; is {prefix!r} the right prefix?")


def transformers_to_openclip(state_dict: Mapping[str, torch.Tensor], *, prefix: str = "") -> dict[str, torch.Tensor]:
    """The open_clip text-tower layout of transformers CLIP text weights, each key prefixed with ``prefix``.

    The inverse of :func:`openclip_to_transformers`: ``prefix`` names where the tower goes in the
    output (e.g. ``"cond_stage_model.model."`` to write an SD 2.x-style checkpoint). Input keys are
    bare transformers names; ``vision_model.*``, ``visual_projection``, ``logit_scale`` and
    ``position_ids`` are ignored, anything else unknown raises :class:`CheckpointError`. The q, k, v
    projections of each layer are concatenated into ``in_proj`` and must all be present.
    """
    converted: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        if key.startswith(_TRANSFORMERS_IGNORED):
            continue
        match = _TRANSFORMERS_BLOCK.fullmatch(key)
        fused = match and _TRANSFORMERS_QKV.fullmatch(match.group(2))
        if fused:
            qkv.setdefault((match.group(1), fused.group(2)), {})[fused.group(1)] = tensor
        else:
            name, value = _transformers_entry(key, tensor, match)
            converted[prefix + name] = value
    for (layer, kind), parts in qkv.items():
        converted[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = _fuse_qkv(parts, layer, kind)
    if not converted:
        raise CheckpointError("no transformers CLIP text-model weights given; pass the text encoder's state_dict().")
    return converted


_TOP_LEVEL_INVERSE = {hf: oc for oc, hf in _TOP_LEVEL.items()}
_BLOCK_INVERSE = {hf: oc for oc, hf in _BLOCK.items()}


def _transformers_entry(key: str, tensor: torch.Tensor, block: re.Match | None) -> tuple[str, torch.Tensor]:
    if key in _TOP_LEVEL_INVERSE:
        return _TOP_LEVEL_INVERSE[key], tensor
    if key == "text_projection.weight":
        return "text_projection", tensor.T.contiguous()
    if block and block.group(2) in _BLOCK_INVERSE:
        return f"transformer.resblocks.{block.group(1)}.{_BLOCK_INVERSE[block.group(2)]}", tensor
    raise CheckpointError(f"{key}: not a transformers CLIP text-model key; pass the text encoder's state_dict().")


def _fuse_qkv(parts: Mapping[str, torch.Tensor], layer: str, kind: str) -> torch.Tensor:
    missing = [p for p in _QKV if p not in parts]
    if missing:
        raise CheckpointError(f"layer {layer}: self_attn {kind} is missing {missing}; cannot build the fused in_proj.")
    return torch.cat([parts[p] for p in _QKV], dim=0)


def openclip_text_config(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict:
    """``transformers.CLIPTextConfig`` keyword arguments for the open_clip text tower under ``prefix``.

    Sizes are read from tensor shapes (meta tensors suffice). The head count is not recorded in
    the weights: OpenCLIP's text towers use 64-dimensional heads (ViT-H: 1024/16, bigG: 1280/20),
    so ``num_attention_heads = hidden_size // 64``. The activation is exact ``gelu`` (open_clip's
    ``nn.GELU``), not OpenAI CLIP's ``quick_gelu``; LayerNorm eps is PyTorch's 1e-5. The last two
    token ids are open_clip's start/end-of-text tokens (49406, 49407 for its 49408-token vocabulary).
    """
    token = _required(state_dict, prefix, "token_embedding.weight")
    vocab_size, hidden = token.shape
    if hidden % 64:
        raise CheckpointError(f"{prefix}token_embedding.weight: width {hidden} is not a multiple of 64-wide heads.")
    projection = state_dict.get(prefix + "text_projection")
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": _required(state_dict, prefix, "transformer.resblocks.0.mlp.c_fc.weight").shape[0],
        "num_hidden_layers": _layer_count(state_dict, prefix),
        "num_attention_heads": hidden // 64,
        "max_position_embeddings": _required(state_dict, prefix, "positional_embedding").shape[0],
        "projection_dim": projection.shape[1] if projection is not None else hidden,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
    }


def _layer_count(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    blocks = (_OPENCLIP_BLOCK.fullmatch(key[len(prefix) :]) for key in state_dict if key.startswith(prefix))
    return 1 + max(int(match.group(1)) for match in blocks if match)


def _required(state_dict: Mapping[str, torch.Tensor], prefix: str, name: str) -> torch.Tensor:
    if prefix + name not in state_dict:
        raise CheckpointError(f"{prefix}{name}: missing; no OpenCLIP text tower under the prefix {prefix!r}.")
    return state_dict[prefix + name]

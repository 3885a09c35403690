r"""The key layout of an original (CompVis / sgm) single-file checkpoint, written down once.

An original checkpoint is the ``state_dict()`` of CompVis's ``LatentDiffusion`` (SD 1.x/2.x) or
sgm's ``DiffusionEngine`` (SDXL): one flat dict whose key prefixes say which network a tensor
belongs to. The readers (``single_file``, ``detect``), the checks made before them
(``consistency``, ``peek``) and the writer all take the names from here:

=================================================  =============================================
prefix                                             network
=================================================  =============================================
``model.diffusion_model.``                         UNet (``LatentDiffusion.model.diffusion_model``)
``model_ema.``                                     its EMA copy (CompVis ``LitEma``, dotless names)
``first_stage_model.``                             VAE (``AutoencoderKL``)
``cond_stage_model.transformer.``                  SD 1.x CLIP ViT-L/14, transformers layout
``cond_stage_model.model.``                        SD 2.x OpenCLIP ViT-H/14, open_clip layout
``conditioner.embedders.0.transformer.``           SDXL CLIP ViT-L/14, transformers layout
``conditioner.embedders.1.model.``                 SDXL OpenCLIP ViT-bigG/14, open_clip layout
=================================================  =============================================

Inside each network the names are CompVis's own (``input_blocks.N.``, ``encoder.down.N.``) or
transformers' (``text_model.encoder.layers.N.``); the patterns below capture the ``N`` the
architecture is counted from. diffusers knows the same prefixes as ``LDM_UNET_KEY``,
``LDM_VAE_KEYS`` and ``LDM_CLIP_PREFIX_TO_REMOVE`` (``diffusers/loaders/single_file_utils.py``); its
folder layout is the other one (:mod:`~diffusion_notes.checkpoints.diffusers_layout`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from ..errors import CheckpointError

__all__ = ["UNET_PREFIX", "VAE_PREFIX", "EMA_PREFIX", "TEXT_PREFIXES", "is_openclip", "UNET_KEYS", "VAE_KEYS",
           "CLIP_KEYS", "OPENCLIP_KEYS", "UNET_INPUT_BLOCK", "VAE_LEVEL", "VAE_LEVEL_0_RESBLOCK", "CLIP_LAYER",
           "transformer_block", "indices", "split_by_prefix", "strip_prefix", "pick_ema"]

#: Where an original single file keeps its UNet (CompVis ``LatentDiffusion.model.diffusion_model``).
UNET_PREFIX = "model.diffusion_model."
#: CompVis ``LatentDiffusion.first_stage_model``: the autoencoder.
VAE_PREFIX = "first_stage_model."
#: CompVis ``LatentDiffusion.model_ema`` (``LitEma``): EMA copies of the UNet's parameters.
EMA_PREFIX = "model_ema."
_EMA_BOOKKEEPING = {EMA_PREFIX + "decay", EMA_PREFIX + "num_updates"}
#: Where each family keeps its text encoder(s): transformers layout (``.transformer.``) or open_clip (``.model.``).
TEXT_PREFIXES = {
    "sd1": ("cond_stage_model.transformer.",),
    "sd2": ("cond_stage_model.model.",),
    "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
}


def is_openclip(prefix: str) -> bool:
    """True for a text prefix whose tower is stored in open_clip's layout (CompVis ``FrozenOpenCLIPEmbedder``'s
    ``.model``), False for transformers' (``FrozenCLIPEmbedder``'s ``.transformer``)."""
    return prefix.endswith(".model.")


def _any_of(prefixes: Iterable[str]) -> str:
    return "(?:" + "|".join(re.escape(p) for p in dict.fromkeys(prefixes)) + ")"


_ALL_TEXT = [p for prefixes in TEXT_PREFIXES.values() for p in prefixes]

# Regular expressions for the start of a whole key, one per kind of network (``consistency`` groups by them).
UNET_KEYS = re.escape(UNET_PREFIX)
VAE_KEYS = re.escape(VAE_PREFIX)
#: A transformers-layout CLIP tower; transformers >= 5.6 may write its names without ``text_model.``.
CLIP_KEYS = _any_of(p for p in _ALL_TEXT if not is_openclip(p)) + r"(?:text_model\.)?"
OPENCLIP_KEYS = _any_of(p for p in _ALL_TEXT if is_openclip(p))

# Inside one network (prefix removed), the counted parts; group 1 is the index.
#: UNet input blocks: ``input_blocks.0`` is ``conv_in``, a level ends at a block holding ``0.op`` (Downsample).
UNET_INPUT_BLOCK = r"input_blocks\.(\d+)\."
#: VAE encoder levels (``encoder.down.N``; the factor is 2 ** (levels - 1)).
VAE_LEVEL = r"encoder\.down\.(\d+)\."
#: ResBlocks of the VAE encoder's first level.
VAE_LEVEL_0_RESBLOCK = r"encoder\.down\.0\.block\.(\d+)\."
#: Layers of a transformers-layout CLIP text encoder.
CLIP_LAYER = r"encoder\.layers\.(\d+)\."


def transformer_block(block: str) -> str:
    """The ``BasicTransformerBlock``s of the SpatialTransformer in UNet block ``block`` (e.g. ``input_blocks.1``)."""
    return re.escape(block) + r"\.1\.transformer_blocks\.(\d+)\."


def indices(keys: Iterable[str], pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (one group, matched at the start) in ``keys``."""
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def split_by_prefix(
    state_dict: Mapping[str, torch.Tensor], prefixes: Iterable[str]
) -> dict[str, dict[str, torch.Tensor]]:
    """Group a single-file checkpoint into its sub-models, stripping each sub-model's prefix.

    ``split_by_prefix(sd, ["model.diffusion_model.", "first_stage_model.", "cond_stage_model."])``
    gives ``{"model.diffusion_model.": {unet keys}, "first_stage_model.": {vae keys}, ...}``. SDXL
    uses ``conditioner.embedders.0.`` (CLIP ViT-L) and ``conditioner.embedders.1.`` (OpenCLIP bigG)
    for its text encoders. A key goes to its longest matching prefix, so nested prefixes such as
    ``model.`` and ``model.diffusion_model.`` do not share keys; keys matching no prefix are left
    out, and a prefix with no keys maps to an empty dict. Tensors are not copied.
    """
    prefixes = list(prefixes)
    groups: dict[str, dict[str, torch.Tensor]] = {prefix: {} for prefix in prefixes}
    by_length = sorted(prefixes, key=len, reverse=True)
    for key, tensor in state_dict.items():
        prefix = next((p for p in by_length if key.startswith(p)), None)
        if prefix is not None:
            groups[prefix][key[len(prefix) :]] = tensor
    return groups


def strip_prefix(state_dict: Mapping, prefix: str) -> dict:
    """The entries under ``prefix``, with it removed (one group of :func:`split_by_prefix`)."""
    return split_by_prefix(state_dict, [prefix])[prefix]


def pick_ema(state_dict: Mapping[str, torch.Tensor], use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Choose between a CompVis checkpoint's raw and EMA UNet weights; return a dict without EMA keys.

    CompVis ``LitEma`` (``ldm/modules/ema.py``) keeps an exponential moving average of every
    trainable parameter of ``model`` (the ``DiffusionWrapper``) as a buffer whose name is the
    parameter name with its dots removed: ``model.diffusion_model.input_blocks.0.0.weight`` has the
    EMA copy ``model_ema.diffusion_modelinput_blocks00weight``, beside ``model_ema.decay`` and
    ``model_ema.num_updates``. diffusers' ``convert_ldm_unet_checkpoint(extract_ema=True)`` reads the
    same names.

    * ``use_ema=False`` (the default) keeps ``model.diffusion_model.*`` as stored. The released SD
      checkpoints (``v1-5-pruned-emaonly``, ``v2-1_768-ema-pruned``, SDXL base) already hold the EMA
      weights there and carry no ``model_ema.*`` keys, so this is the right choice for them.
    * ``use_ema=True`` overwrites each ``model.diffusion_model.*`` parameter with its EMA copy;
      buffers, which LitEma does not average, keep their stored values. A checkpoint without EMA
      weights raises :class:`CheckpointError`.
    """
    ema = {k: v for k, v in state_dict.items() if k.startswith(EMA_PREFIX) and k not in _EMA_BOOKKEEPING}
    picked = {k: v for k, v in state_dict.items() if not k.startswith(EMA_PREFIX)}
    if not use_ema:
        return picked
    if not ema:
        raise CheckpointError(
            "use_ema=True but the checkpoint has no model_ema.* weights; released SD checkpoints already store "
            "their EMA weights in model.diffusion_model.*, so load them with use_ema=False."
        )
    unet_keys = [k for k in picked if k.startswith(UNET_PREFIX)]
    flat_to_key = _ema_names(unet_keys)
    unmatched = sorted(set(ema) - set(flat_to_key))
    if unmatched:
        raise CheckpointError(
            f"{len(unmatched)} model_ema.* weights (e.g. {unmatched[0]}) match no model.diffusion_model.* key; "
            "the EMA and model weights come from different networks, so load with use_ema=False."
        )
    for flat, key in flat_to_key.items():
        if flat in ema:
            picked[key] = ema[flat]
    return picked


def _ema_names(unet_keys: Iterable[str]) -> dict[str, str]:
    """LitEma's dotless buffer name for each ``model.diffusion_model.*`` key (``model.`` is LitEma's root)."""
    names: dict[str, str] = {}
    for key in unet_keys:
        flat = EMA_PREFIX + key[len("model.") :].replace(".", "")
        if flat in names:
            # LitEma itself would have stored both parameters under one buffer, so neither is recoverable.
            raise CheckpointError(f"{names[flat]} and {key} share the EMA name {flat}; the EMA weights are ambiguous.")
        names[flat] = key
    return names

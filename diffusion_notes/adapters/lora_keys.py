r"""Which layer of *our* model each tensor of a LoRA file belongs to: the file formats and their names.

A LoRA file stores, per adapted layer, two low-rank factors and (optionally) a scale. Three
spellings are in circulation; the **keys** say which one a file uses (never the file name):

* **kohya** (sd-scripts ``networks/lora.py``; what AUTOMATIC1111, ComfyUI and most shared files
  use): ``<layer>.lora_down.weight`` (:math:`A`, rank x in), ``<layer>.lora_up.weight`` (:math:`B`,
  out x rank), optional ``<layer>.alpha``. ``<layer>`` is the module path with ``.`` turned into
  ``_`` behind a prefix: ``lora_unet_`` (UNet), ``lora_te_`` (SD 1.x/2.x text encoder), ``lora_te1_``
  / ``lora_te2_`` (SDXL's CLIP-L / OpenCLIP bigG). SD 1.x/2.x UNet paths are diffusers' module
  names (``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``); sd-scripts
  trains SDXL on its own sgm UNet, so SDXL files carry the CompVis/sgm names this package uses
  (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``). A "LoCon" file adds the
  ResBlock convolutions: a 3x3 ``lora_down`` and a 1x1 ``lora_up``.
* **PEFT / diffusers** (``save_lora_weights``): ``unet.<diffusers path>.lora_A.weight`` and
  ``.lora_B.weight``; ``text_encoder.`` / ``text_encoder_2.`` prefixes for the text encoders.
* **old diffusers** (attention processors, before PEFT): ``<attention>.processor.to_q_lora.down.weight``
  / ``.up.weight`` (``to_out_lora`` for ``to_out.0``), ``<path>.lora.down.weight`` and
  ``<path>.lora_linear_layer.down.weight``.

Since ``_`` also occurs inside module names (``transformer_blocks``), a kohya name is never split;
instead every layer of our model is spelled in each naming and looked up (:func:`layer_names`).
The UNet's diffusers names come from :mod:`diffusion_notes.checkpoints.diffusers_layout`.

Counterparts: diffusers ``loaders/lora_conversion_utils.py`` (``_convert_non_diffusers_lora_to_diffusers``),
AUTOMATIC1111 ``extensions-builtin/Lora/networks.py`` (``convert_diffusers_name_to_compvis``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..checkpoints import diffusers_layout as layout
from ..errors import CheckpointError
from ..models.text import clip_transformer
from .peft_config import ALL, peft_alpha

__all__ = ["LoraLayer", "check_lora_keys", "detect_lora_format", "layer_names", "lora_layers"]

#: The text encoders' kohya prefixes, per family (index = position in ``sd.text_encoders``).
KOHYA_TEXT_PREFIXES = {"sd1": ("lora_te_",), "sd2": ("lora_te_",), "sdxl": ("lora_te1_", "lora_te2_")}
#: The same for the PEFT / diffusers spelling.
DIFFUSERS_TEXT_PREFIXES = {"sd1": ("text_encoder.",), "sd2": ("text_encoder.",),
                           "sdxl": ("text_encoder.", "text_encoder_2.")}
#: Text-encoder prefixes that betray a LoRA made for another family (for the error message).
_OTHER_FAMILY_HINTS = (("lora_te1_", "SDXL"), ("lora_te2_", "SDXL"), ("text_encoder_2.", "SDXL"),
                       ("lora_te_", "SD 1.x/2.x"))

#: Tensor names of LyCORIS / DoRA variants that are not a plain LoRA, with what they are.
_NOT_PLAIN_LORA = {
    "dora_scale": "DoRA (weight-decomposed LoRA), which rescales whole weight columns; not supported",
    "lora_mid.weight": "LoCon with a Tucker-decomposed middle factor (lora_mid); not supported",
    "hada_t": "LyCORIS LoHa with Tucker factors (hada_t1/hada_t2); not supported",
    "lokr_t2": "LyCORIS LoKr with a Tucker factor (lokr_t2); not supported",
    ".diff": "a full weight difference (LyCORIS 'full'); not supported", "oft_blocks": "OFT; not supported",
}
#: kohya-prefixed LyCORIS factors (adapters.lycoris): LoHa's four, LoKr's whole or factored sides.
LOHA_ROLES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_ROLES = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


@dataclass(frozen=True)
class LoraLayer:
    """The two factors of one adapted layer, as a file names them, and the layer of ours they update.

    ``down`` is :math:`A` (``lora_down`` / ``lora_A``), ``(rank, in[, kh, kw])``; ``up`` is :math:`B`
    (``lora_up`` / ``lora_B``), ``(out, rank[, 1, 1])``; ``alpha`` None means a scale of 1. LyCORIS
    layers hold their own factors instead (``kind`` "loha" / "lokr", :mod:`diffusion_notes.adapters.lycoris`).
    ``target`` is the module's path from the ``StableDiffusion`` object (``unet.input_blocks.1.1...``,
    ``prompt_encoder.text_encoders.0.encoder.layers.0.self_attn.q_proj``)."""

    key: str
    target: str
    factors: dict  # role -> tensor: "down"/"up" (LoRA), LOHA_ROLES (LoHa) or LOKR_ROLES (LoKr)
    alpha: float | None

    @property
    def kind(self) -> str:
        """``"lora"``, ``"loha"`` or ``"lokr"``."""
        return "loha" if "hada_w1_a" in self.factors else "lokr" if any(r in self.factors for r in LOKR_ROLES) else "lora"

    down = property(lambda self: self.factors.get("down"))
    up = property(lambda self: self.factors.get("up"))


def detect_lora_format(keys) -> str:
    """``"kohya"``, ``"peft"`` or ``"diffusers-old"`` from the tensor names (CheckpointError for none)."""
    keys = list(keys)
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "peft"
    if any(k.endswith(("_lora.down.weight", ".lora.down.weight", ".lora_linear_layer.down.weight")) for k in keys):
        return "diffusers-old"
    shown = ", ".join(keys[:3]) or "no tensors"
    raise CheckpointError(f"not a LoRA file: no kohya (lora_unet_*/lora_te_*), PEFT (*.lora_A.weight) or diffusers "
                          f"(*.lora.down.weight) tensor names; it starts with {shown}.")


def _weighted_modules(network: nn.Module):
    """``(name, module)`` of every Linear / convolution (a module with a 2-D or 4-D ``weight``)."""
    for name, module in network.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() in (2, 4) and not isinstance(module, nn.Embedding):
            yield name, module


def layer_names(sd, lora_format: str) -> dict[str, str]:
    """``{name of a layer in lora_format: its path in sd}`` for every adaptable layer of ``sd``.

    kohya names end at the layer (``lora_unet_..._to_q``); PEFT / diffusers names too
    (``unet.down_blocks....to_q``); the old diffusers suffixes are reduced to these by :func:`_layer_of`.
    """
    unet_layers = [name for name, _ in _weighted_modules(sd.unet)]
    compvis_to_diffusers = layout.unet_to_diffusers({f"{n}.weight": n for n in unet_layers}, sd.unet.config)
    diffusers_name = {compvis: key.removesuffix(".weight") for key, compvis in compvis_to_diffusers.items()}
    names = {}
    for compvis in unet_layers:
        target = f"unet.{compvis}"
        if lora_format == "kohya":
            for spelling in (compvis, diffusers_name[compvis]):  # sgm names (SDXL files), diffusers names (SD 1/2)
                names["lora_unet_" + spelling.replace(".", "_")] = target
        else:
            names["unet." + diffusers_name[compvis]] = target
    prefixes = (KOHYA_TEXT_PREFIXES if lora_format == "kohya" else DIFFUSERS_TEXT_PREFIXES)[sd.family]
    for index, (encoder, prefix) in enumerate(zip(sd.text_encoders, prefixes)):
        inner = clip_transformer(encoder)
        outer = "" if inner is encoder else "text_model."  # transformers < 5.6 wraps the layers in text_model
        for name, _ in _weighted_modules(inner):
            target = f"prompt_encoder.text_encoders.{index}.{outer}{name}"
            if lora_format == "kohya":
                names[prefix + ("text_model." + name).replace(".", "_")] = target
            else:
                names[prefix + "text_model." + name] = target
                names[prefix + name] = target  # diffusers with transformers >= 5.6 drops text_model.
    return names


# --------------------------------------------------------------------------------------------
# Splitting a file's keys into (layer, role)
# --------------------------------------------------------------------------------------------

_OLD_ATTENTION = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"}
_OLD_TEXT_ATTENTION = {"to_q_lora": "q_proj", "to_k_lora": "k_proj", "to_v_lora": "v_proj", "to_out_lora": "out_proj"}


def _layer_of(key: str, lora_format: str) -> tuple[str, str]:
    """``(layer name, role)`` with role ``"down"``, ``"up"`` or ``"alpha"``; CheckpointError for other tensors."""
    if lora_format == "kohya":
        layer, _, rest = key.partition(".")
        roles = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha",
                 **{role: role for role in LOHA_ROLES + LOKR_ROLES}}
        if rest in roles:
            return layer, roles[rest]
    elif lora_format == "peft":
        for suffix, role in ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".alpha", "alpha")):
            if key.endswith(suffix):
                return key.removesuffix(suffix), role
    else:
        for role in ("down", "up"):
            for suffix in (f".lora.{role}.weight", f".lora_linear_layer.{role}.weight"):
                if key.endswith(suffix):
                    return key.removesuffix(suffix), role
            head, _, last = key.removesuffix(f".{role}.weight").rpartition(".")
            if key.endswith(f".{role}.weight") and last in _OLD_ATTENTION:
                names = _OLD_TEXT_ATTENTION if key.startswith("text_encoder") else _OLD_ATTENTION
                return f"{head.removesuffix('.processor')}.{names[last]}", role
    for marker, what in _NOT_PLAIN_LORA.items():
        if marker in key:
            raise CheckpointError(f"LoRA tensor {key!r} is {what}.")
    raise CheckpointError(f"LoRA tensor {key!r} is not a {lora_format} LoRA factor (expected down/up weights or alpha).")


def check_lora_keys(keys) -> str:
    """The format of a file with tensor names ``keys`` (:func:`detect_lora_format`), every name checked to be
    a factor or alpha of that format (DoRA and other variants refused); what can be told before a model
    is loaded (the command line checks ``--lora`` files with it). Raises :class:`CheckpointError`."""
    keys = list(keys)
    lora_format = detect_lora_format(keys)
    for key in keys:
        _layer_of(key, lora_format)
    return lora_format


def _wrong_family_hint(layer: str, family: str) -> str:
    for prefix, other in _OTHER_FAMILY_HINTS:
        if layer.startswith(prefix) and not any(layer.startswith(p) for p in KOHYA_TEXT_PREFIXES[family]
                                                + DIFFUSERS_TEXT_PREFIXES[family]):
            return f" (its prefix {prefix!r} is {other}'s: a LoRA for another model family?)"
    return " (a LoRA for another model family or architecture?)"


def _missing_factor(found: dict) -> str | None:
    """The name of a factor the layer's kind needs and the file lacks, else None."""
    if any(role in found for role in LOHA_ROLES):
        return next((role for role in LOHA_ROLES if role not in found), None)
    if any(role in found for role in LOKR_ROLES):
        for side in ("lokr_w1", "lokr_w2"):
            if side not in found and not (f"{side}_a" in found and f"{side}_b" in found):
                return f"{side} (or {side}_a and {side}_b)"
        return None
    return next((role for role in ("down", "up") if role not in found), None)


def lora_layers(state_dict: dict[str, torch.Tensor], sd, peft_config: dict | None = None) -> list[LoraLayer]:
    """The file's tensors grouped per layer and matched to a module of ``sd``; every key must match.

    ``peft_config``: the file's PEFT configuration (:func:`.peft_config.read_peft_config`), which gives
    the alpha of a PEFT-format layer that stores none. Raises :class:`CheckpointError` naming the
    first key that is not a LoRA factor, matches no layer of ``sd``, or misses its partner factor.
    Shapes are checked later, by the merge."""
    lora_format = detect_lora_format(state_dict)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        layer, role = _layer_of(key, lora_format)
        parts.setdefault(layer, {})[role] = tensor
    names = layer_names(sd, lora_format)
    layers = []
    for layer, found in parts.items():
        if layer not in names:
            raise CheckpointError(f"LoRA layer {layer!r} matches no layer of this {sd.family} model"
                                  f"{_wrong_family_hint(layer, sd.family)}.")
        missing = _missing_factor(found)
        if missing:
            raise CheckpointError(f"LoRA layer {layer!r} has no {missing} factor ({lora_format} format).")
        alpha = found.pop("alpha", None)
        if alpha is not None and alpha.numel() != 1:
            raise CheckpointError(f"LoRA layer {layer!r}: alpha has shape {tuple(alpha.shape)}, expected one number.")
        alpha = None if alpha is None else float(alpha.reshape(()))
        if alpha is None and lora_format == "peft" and peft_config:
            component, _, module = layer.partition(".")
            config = peft_config.get(component, peft_config.get(ALL))
            if config is not None:
                alpha = peft_alpha(config, module, found["down"].shape[0], layer)
        layers.append(LoraLayer(layer, names[layer], found, alpha))
    return layers

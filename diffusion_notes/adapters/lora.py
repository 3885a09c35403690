r"""LoRA: a low-rank update merged into a layer's weight, and taken out again.

LoRA (Hu et al. 2021, Eq. 3) fine-tunes a frozen weight :math:`W_0 \in \mathbb R^{d_{out}\times d_{in}}`
through two small factors :math:`B \in \mathbb R^{d_{out}\times r}`, :math:`A \in \mathbb R^{r\times d_{in}}`:

.. math:: h = W_0 x + \Delta W x, \qquad \Delta W = m\,\frac{\alpha}{r}\,B A

with the rank :math:`r` (rows of :math:`A`), the file's :math:`\alpha` (Sec. 4.1; kohya stores it per
layer as ``.alpha``, and no ``alpha`` means :math:`\alpha = r`, a scale of 1) and the user's multiplier
:math:`m` (AUTOMATIC1111's ``<lora:name:m>``, diffusers' ``lora_scale``). For a convolution
(kohya's "LoCon") :math:`A` is a ``(r, in, kh, kw)`` kernel and :math:`B` a ``(out, r, 1, 1)`` one:
running one after the other is the convolution with the kernel :math:`B A` reshaped to
``(out, in, kh, kw)``, so the same product, on flattened kernels, gives :math:`\Delta W`.

Merging writes :math:`W_0 + \Delta W` into the layer: inference then costs nothing extra. Here:

* :func:`lora_delta`: the formula above;
* :func:`read_lora`: a file (or a state dict) -> its tensors, name and sha256;
* :func:`plan_lora`: every check, and every :math:`\Delta W`, computed before anything is changed;
* :func:`load_lora` / :func:`unload_loras`: merge (stacking: each LoRA adds its own :math:`\Delta W`)
  and restore the original weights exactly, from the originals kept at the first merge;
* :func:`temporary_loras`: merge some LoRAs for one ``with`` block and take out exactly them
  (a prompt's ``<lora:name:weight>`` tags, :mod:`.prompt_tags`).

What was applied is recorded as :class:`AppliedLora` (name, multiplier, sha256 of the file, and
AUTOMATIC1111's hash of it, :func:`a1111_lora_hash`), and :func:`lora_hashes` writes AUTOMATIC1111's
``Lora hashes: "name: hash"`` infotext entry. A PEFT file's ``lora_alpha`` comes from its config
(:mod:`.peft_config`).

Counterparts: kohya sd-scripts ``networks/lora.py`` (``LoRAModule``, ``merge_to``), diffusers
``fuse_lora`` / ``unfuse_lora`` (PEFT ``LoraLayer.merge``), AUTOMATIC1111
``extensions-builtin/Lora/network_lora.py`` (``calc_updown``).
"""

from __future__ import annotations

import hashlib
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoints.io import load_state_dict
from ..checkpoints.safetensors_header import read_safetensors_header
from ..errors import CheckpointError
from ..models.prepacked import PrepackedConv2d
from .lora_keys import LOHA_ROLES, LOKR_ROLES, LoraLayer, lora_layers
from .lycoris import loha_delta, lokr_delta
from .peft_config import read_peft_config

__all__ = ["AppliedLora", "lora_delta", "read_lora", "plan_lora", "load_lora", "unload_loras", "applied_loras",
           "lora_hashes", "lora_hash_list", "temporary_loras", "a1111_lora_hash"]


@dataclass(frozen=True)
class AppliedLora:
    """One merged LoRA: its name (file stem), multiplier, the sha256 of its file (hex) and the hash
    AUTOMATIC1111 shows for it (:func:`a1111_lora_hash`)."""

    name: str
    scale: float
    sha256: str
    a1111_hash: str = ""

    @property
    def short_hash(self) -> str:
        """What ``Lora hashes:`` shows: the first 12 hex digits of AUTOMATIC1111's hash (of the sha256 when
        there is none, for a state dict given in memory)."""
        return (self.a1111_hash or self.sha256)[:12]


def lora_delta(down: torch.Tensor, up: torch.Tensor, alpha: float | None, multiplier: float = 1.0) -> torch.Tensor:
    r"""LoRA, Hu et al. 2021, Eq. 3 with the scale of Sec. 4.1: :math:`\Delta W = m\,\frac{\alpha}{r}\,BA`.

    ``down`` = :math:`A` ``(r, in[, kh, kw])``, ``up`` = :math:`B` ``(out, r[, 1, 1])``; ``alpha`` None means
    :math:`\alpha = r`. Returns ``(out, in[, kh, kw])`` in float32. kohya: ``lora_up.weight @ lora_down.weight
    * multiplier * scale``; diffusers / PEFT: ``lora_B.weight @ lora_A.weight * scaling``."""
    rank = down.shape[0]
    scale = multiplier * (1.0 if alpha is None else alpha / rank)
    product = up.flatten(1).float() @ down.flatten(1).float()  # (out, r) @ (r, in * kh * kw)
    return scale * product.reshape(up.shape[0], *down.shape[1:])


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of_tensors(state_dict: dict[str, torch.Tensor]) -> str:
    """A state dict given in memory has no file: hash its names and float32 values instead."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def a1111_lora_hash(path) -> str:
    """The hash AUTOMATIC1111 records for a LoRA file (``extensions-builtin/Lora/network.py``,
    ``NetworkOnDisk``): the ``sshs_model_hash`` of a safetensors header when kohya's trainer wrote one,
    else for ``.safetensors`` kohya's "addnet" hash, the sha256 of the bytes after the header (so that
    editing the metadata keeps the hash; ``modules/hashes.py``, ``addnet_hash_safetensors``), else the
    sha256 of the whole file. ``Lora hashes:`` shows its first 12 hex digits."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return sha256_of_file(path)
    header = read_safetensors_header(path)
    stated = header.metadata.get("sshs_model_hash")
    if stated:
        return stated
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(header.data_start)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_lora(path_or_state_dict) -> tuple[dict[str, torch.Tensor], str, str]:
    """``(tensors, name, sha256)``: a LoRA file read without running code (``checkpoints.io``), its stem
    and the sha256 of its bytes; for a state dict, the name ``"state_dict"`` and a hash of its tensors."""
    if isinstance(path_or_state_dict, dict):
        tensors = dict(path_or_state_dict)
        return tensors, "state_dict", sha256_of_tensors(tensors)
    path = Path(os.fspath(path_or_state_dict))
    tensors = load_state_dict(path)
    return tensors, path.stem, sha256_of_file(path)


def _check_factors(layer: LoraLayer, weight_shape: torch.Size) -> None:
    """One clear CheckpointError if ``layer``'s factors cannot update a weight of ``weight_shape``."""
    down, up = layer.down, layer.up
    where = f"LoRA layer {layer.key!r} (on {layer.target})"
    for role, tensor in layer.factors.items():
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise CheckpointError(f"{where}: the {role} factor holds NaN, inf or non-float values.")
    if layer.alpha is not None and not math.isfinite(layer.alpha):
        raise CheckpointError(f"{where}: alpha is {layer.alpha}.")
    if layer.kind != "lora":
        return
    if down.dim() not in (2, 4) or up.dim() != down.dim() or up.shape[1] != down.shape[0] \
            or (up.dim() == 4 and tuple(up.shape[2:]) != (1, 1)):
        raise CheckpointError(f"{where}: factors of shapes down {tuple(down.shape)}, up {tuple(up.shape)} do not "
                              "form a rank-r product (expected down (r, in[, kh, kw]), up (out, r[, 1, 1])).")
    update = (up.shape[0], *down.shape[1:])
    fits = tuple(weight_shape) == update or (
        weight_shape[:2] == update[:2] and math.prod(weight_shape) == math.prod(update))  # 1x1 conv <-> Linear
    if not fits:
        raise CheckpointError(f"{where}: the factors give a {update} update but the layer's weight is "
                              f"{tuple(weight_shape)} (a LoRA for another model size or family?).")


def plan_lora(sd, state_dict: dict[str, torch.Tensor], scale: float = 1.0,
              peft_config: dict | None = None) -> list[tuple[str, torch.Tensor]]:
    """``[(module path, ΔW)]`` for every layer of ``state_dict``: all checks done, nothing changed.
    ``peft_config``: a PEFT file's ``lora_alpha`` / ``r`` / patterns (:mod:`.peft_config`).

    Raises :class:`CheckpointError` (one line naming the key, the layer and the reason) for a file that
    is no LoRA, a key matching no layer of ``sd``, a LoRA of another family, a shape that does not fit,
    NaN/inf, or a variant (DoRA, LoHa, LoKr) this module does not merge."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise CheckpointError(f"LoRA scale must be a finite number, not {scale!r}.")
    plan = []
    for layer in lora_layers(state_dict, sd, peft_config):
        weight_shape = sd.get_submodule(layer.target).weight.shape
        _check_factors(layer, weight_shape)
        plan.append((layer.target, _delta(layer, scale, weight_shape)))
    return plan


def _delta(layer: LoraLayer, scale: float, weight_shape: torch.Size) -> torch.Tensor:
    """The layer's ΔW shaped like its weight: LoRA here, LoHa / LoKr from :mod:`.lycoris` (shapes checked)."""
    if layer.kind == "lora":
        return lora_delta(layer.down, layer.up, layer.alpha, scale).reshape(weight_shape)
    f = layer.factors
    try:
        if layer.kind == "loha":
            delta = loha_delta(*(f[role] for role in LOHA_ROLES), layer.alpha, scale)
        else:
            delta = lokr_delta(*(f.get(role) for role in LOKR_ROLES), layer.alpha, scale)
    except RuntimeError as error:  # factors whose shapes do not multiply
        raise CheckpointError(f"LoRA layer {layer.key!r} ({layer.kind}): factors of shapes "
                              f"{ {k: tuple(v.shape) for k, v in f.items()} } do not combine.") from error
    if delta.shape[0] != weight_shape[0] or delta.numel() != math.prod(weight_shape):
        raise CheckpointError(f"LoRA layer {layer.key!r} ({layer.kind}): the factors give a {tuple(delta.shape)} "
                              f"update but the layer's weight is {tuple(weight_shape)}.")
    return delta.reshape(weight_shape)


def _set_weight(module: nn.Module, weight: torch.Tensor) -> None:
    """Give ``module`` a new weight tensor (never written in place: the old one may be kept as the original)."""
    if isinstance(module, PrepackedConv2d):  # its .weight is a read-only copy; load_state_dict replaces it
        module.load_state_dict({"weight": weight, **({"bias": module.bias} if module.bias is not None else {})})
    else:
        module.weight = nn.Parameter(weight, requires_grad=module.weight.requires_grad)


def load_lora(sd, path_or_state_dict, scale: float = 1.0) -> AppliedLora:
    r"""Merge a LoRA into ``sd``'s weights: :math:`W \leftarrow W + \Delta W` on every layer it names.

    Every check (:func:`plan_lora`) runs before the first weight changes, so a bad file changes
    nothing. LoRAs stack: each call adds its own :math:`\Delta W`; :func:`unload_loras` restores the
    weights from before the first one. The merge is computed in float32 and stored in the layer's dtype."""
    tensors, name, sha256 = read_lora(path_or_state_dict)
    plan = plan_lora(sd, tensors, scale, _peft_config(path_or_state_dict))
    a1111 = "" if isinstance(path_or_state_dict, dict) else a1111_lora_hash(os.fspath(path_or_state_dict))
    return _merge(sd, plan, AppliedLora(name, float(scale), sha256, a1111))


def _peft_config(path_or_state_dict) -> dict | None:
    return None if isinstance(path_or_state_dict, dict) else read_peft_config(os.fspath(path_or_state_dict))


def _merge(sd, plan: list[tuple[str, torch.Tensor]], applied: AppliedLora) -> AppliedLora:
    """Add each planned ΔW to its layer, keeping the weight from before the first merge for :func:`unload_loras`."""
    originals = vars(sd).setdefault("_lora_originals", {})
    with torch.no_grad():
        for target, delta in plan:
            module = sd.get_submodule(target)
            weight = module.weight
            originals.setdefault(target, weight if isinstance(weight, nn.Parameter) else weight.detach().clone())
            _set_weight(module, (weight.float() + delta.to(weight.device)).to(weight.dtype))
    vars(sd).setdefault("_applied_loras", []).append(applied)
    return applied


@contextmanager
def temporary_loras(sd, loras):
    """Merge ``loras`` (``[(path, scale), ...]``) for the duration of a ``with`` block, then take out
    exactly them, even when the block fails: every layer they touched gets back the very weight it had
    before (not a subtraction), and LoRAs merged earlier with :func:`load_lora` stay. A file that fails
    its checks leaves nothing merged. This is how a prompt's ``<lora:name:weight>`` tags apply to one
    generation (:mod:`diffusion_notes.adapters.prompt_tags`)."""
    loras = list(loras)
    if not loras:
        yield ()
        return
    originals = vars(sd).setdefault("_lora_originals", {})
    records = vars(sd).setdefault("_applied_loras", [])
    kept_originals, count = set(originals), len(records)
    before: dict[str, torch.Tensor] = {}
    try:
        for path, scale in loras:
            tensors, name, sha256 = read_lora(path)
            plan = plan_lora(sd, tensors, scale, _peft_config(path))
            for target, _ in plan:
                before.setdefault(target, sd.get_submodule(target).weight)
            _merge(sd, plan, AppliedLora(name, float(scale), sha256, a1111_lora_hash(path)))
        yield tuple(records[count:])
    finally:
        with torch.no_grad():
            for target, weight in before.items():
                module = sd.get_submodule(target)
                if isinstance(weight, nn.Parameter) and not isinstance(module, PrepackedConv2d):
                    module.weight = weight
                else:
                    _set_weight(module, weight)
        for target in set(originals) - kept_originals:
            del originals[target]
        del records[count:]


def unload_loras(sd) -> None:
    """Put back, exactly, every weight any :func:`load_lora` changed, and forget the applied LoRAs."""
    originals = vars(sd).get("_lora_originals", {})
    with torch.no_grad():
        for target, original in originals.items():
            module = sd.get_submodule(target)
            current = module.weight
            if original.dtype != current.dtype or original.device != current.device:  # sd.to(...) since the merge
                original = original.to(device=current.device, dtype=current.dtype)
            if isinstance(module, PrepackedConv2d) or not isinstance(original, nn.Parameter):
                _set_weight(module, original)
            else:
                module.weight = original
    originals.clear()
    vars(sd).get("_applied_loras", []).clear()


def applied_loras(sd) -> tuple[AppliedLora, ...]:
    """The LoRAs merged into ``sd`` since it was loaded or last unloaded, in order."""
    return tuple(vars(sd).get("_applied_loras", ()))


def lora_hash_list(applied: tuple[AppliedLora, ...] | list[AppliedLora]) -> str | None:
    """The value of AUTOMATIC1111's ``Lora hashes`` infotext field, ``"name: hash, name2: hash2"``, with
    ``:`` and ``,`` removed from the names as AUTOMATIC1111 does (``extra_networks_lora.py``); None when
    no LoRA is applied."""
    if not applied:
        return None
    return ", ".join(f"{a.name.replace(':', '').replace(',', '')}: {a.short_hash}" for a in applied)


def lora_hashes(applied: tuple[AppliedLora, ...] | list[AppliedLora]) -> str:
    """AUTOMATIC1111's infotext entry ``Lora hashes: "name: hash, ..."`` ("" when none is applied)."""
    value = lora_hash_list(applied)
    return f'Lora hashes: "{value}"' if value else ""

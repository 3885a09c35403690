r"""A standalone VAE, read to replace a model's autoencoder ("VAE swap").

Fine-tuned autoencoders are shared on their own: Stability's ``vae-ft-mse-840000-ema-pruned``
(``.ckpt`` / ``.safetensors``, CompVis names), ``sdxl_vae.safetensors``, or a diffusers ``vae/``
folder (``config.json`` + ``diffusion_pytorch_model.safetensors``). Only the decoder's output changes
(sharper eyes and text, as a rule); the latent space is the same, so the UNet is untouched.

:func:`load_vae` reads either form:

* a **file** in the CompVis layout: ``encoder.conv_in.weight``, ``decoder.up.0.block.0...``,
  ``quant_conv``, ``post_quant_conv``; the same under ``first_stage_model.`` (a whole checkpoint, or
  a VAE saved from one) is accepted, and the training-only ``loss.*`` and ``model_ema.*`` tensors are
  left out. Its architecture is read from the shapes (:func:`~.detect.vae_config_from_state_dict`,
  the code the checkpoint loader uses);
* a diffusers **folder** (``vae/`` itself or a model folder holding one): converted with
  :func:`~.diffusers_layout.vae_from_diffusers`, as in :mod:`.diffusers_folder`.

:func:`check_vae_fits` says whether it can serve a given model. What can be told, and what cannot:

* the number of latent channels (4 for SD 1.x/2.x/XL, 16 for SD3 / Flux) and the downsampling
  factor (8) are in the shapes: a VAE that differs is refused;
* the **latent scale factor** is not in the weights. SDXL's VAE has exactly the shapes of SD 1.5's
  but was trained for latents scaled by 0.13025 instead of 0.18215; swapped into SD 1.5 it decodes
  washed-out or noisy pictures. A diffusers folder states it (``scaling_factor`` in its
  ``config.json``), and so does a file written by this package (``diffusion_notes.scale_factor`` in
  the safetensors header, :mod:`.metadata`): where it is stated and differs from the model's, the
  VAE is refused. A plain CompVis file (every ``.ckpt``, and ``sdxl_vae.safetensors`` as released)
  states nothing, so an SDXL VAE in that form **cannot be told from an SD 1.x one** and is loaded.

Counterparts: diffusers ``AutoencoderKL.from_single_file`` / ``from_pretrained`` and a pipeline's
``vae=`` argument; AUTOMATIC1111 ``modules/sd_vae.py`` (its "SD VAE" setting, ``--vae-path``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.config import AutoencoderConfig
from ..models.prepacked import prepack_convolutions
from ..models.vae import AutoencoderKL
from ..precision import default_dtype
from . import diffusers_layout as layout
from .building import build
from .detect import vae_config_from_state_dict
from .diffusers_folder import _parsed, read_json, weights_file
from .io import load_state_dict
from .key_layout import VAE_PREFIX, strip_prefix
from .metadata import from_header, read_header
from .safetensors_header import read_safetensors_header, starts_like_safetensors

__all__ = ["LoadedVae", "load_vae", "check_vae_source", "check_vae_fits"]

#: The tensor every CompVis VAE has (the encoder's first convolution), with or without ``first_stage_model.``.
_MARKER = "encoder.conv_in.weight"
#: Names of a diffusers-layout VAE (what a diffusers ``vae/`` folder's weights file holds).
_DIFFUSERS_MARKER = "encoder.down_blocks."
#: Tensors of a VAE's training, not of the network.
_TRAINING_ONLY = ("loss.", "model_ema.")
#: The other networks of a whole checkpoint given as a VAE: never read.
_NOT_THE_VAE = ("model.diffusion_model.", "model_ema.", "cond_stage_model.", "conditioner.")


@dataclass(frozen=True)
class LoadedVae:
    """An autoencoder read from ``source``, with its architecture and the latent scale factor it states
    (None: the source does not say, as a plain CompVis file)."""

    vae: AutoencoderKL
    config: AutoencoderConfig
    scale_factor: float | None
    source: str


def _folder(path: Path) -> Path:
    """The folder holding the VAE's ``config.json``: ``path`` itself or its ``vae/``."""
    return path / "vae" if (path / "vae" / "config.json").is_file() else path


def check_vae_source(path) -> None:
    """Everything about a VAE file or folder that can be checked without reading its weights (the
    command line runs it before loading the checkpoint): it exists; a folder has a ``config.json`` and a
    weights file; a safetensors file's header names CompVis VAE tensors. A pickle (``.ckpt``, ``.pt``)
    can only be checked when it is loaded. Raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such VAE file or folder.")
    if path.is_dir():
        folder = _folder(path)
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{path}: a folder without a config.json (nor vae/config.json); give a diffusers "
                                  "VAE folder or a .safetensors / .ckpt VAE file.")
        weights_file(folder)
        return
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file; give a .safetensors / .ckpt VAE file or a diffusers folder.")
    with open(path, "rb") as f:
        head = f.read(16)
    if starts_like_safetensors(head):
        _compvis_keys(list(read_safetensors_header(path).tensors), path)


def _compvis_keys(keys: list[str], path) -> str:
    """The prefix (``""`` or ``first_stage_model.``) under which ``keys`` hold a CompVis VAE; else CheckpointError."""
    if any(k.startswith(_DIFFUSERS_MARKER) for k in keys):  # diffusers names encoder.conv_in alike
        raise CheckpointError(f"{path}: a VAE in diffusers' layout (encoder.down_blocks.*) without its config.json; "
                              "give the folder holding config.json and this file instead.")
    if _MARKER in keys:
        return ""
    if VAE_PREFIX + _MARKER in keys:
        return VAE_PREFIX
    if any(".lora_down." in k or ".lora_A." in k for k in keys):
        raise CheckpointError(f"{path}: a LoRA file, not a VAE (load it with --lora / load_lora).")
    shown = ", ".join(keys[:3]) or "no tensors"
    raise CheckpointError(f"{path}: not a VAE: no {_MARKER} (nor {VAE_PREFIX}{_MARKER}) tensor; it starts with {shown}.")


def load_vae(path, torch_dtype: torch.dtype | None = None, device=None, prepack: bool | None = None) -> LoadedVae:
    """Read a standalone VAE (a CompVis-layout ``.safetensors`` / ``.ckpt`` or a diffusers folder) onto
    ``device`` in ``torch_dtype`` (default: the device's, :func:`~diffusion_notes.precision.default_dtype`).
    ``prepack``: as :meth:`StableDiffusion.from_single_file` (default: on the CPU). Raises
    :class:`CheckpointError` for anything that is not a VAE."""
    path = Path(path)
    check_vae_source(path)
    dtype = torch_dtype or default_dtype(device)
    if path.is_dir():
        folder = _folder(path)
        config_json = read_json(folder / "config.json")
        config = _parsed(folder / "config.json", layout.vae_config_from_diffusers, config_json)
        weights = weights_file(folder)
        state = _parsed(weights, lambda w: layout.vae_from_diffusers(w, config), load_state_dict(weights, dtype=dtype),
                        folder / "config.json")
        scale = config_json.get("scaling_factor", 0.18215)  # diffusers AutoencoderKL's default
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
            raise CheckpointError(f"{folder / 'config.json'}: scaling_factor={scale!r} must be a positive number.")
        vae = build(AutoencoderKL, config, state, "VAE", "vae/", str(folder / "config.json"))
        loaded = LoadedVae(vae, config, float(scale), str(path))
    else:
        state = load_state_dict(path, dtype=dtype, skip=lambda name: name.startswith(_NOT_THE_VAE))
        prefix = _compvis_keys(list(state), path)
        state = {k: v for k, v in strip_prefix(state, prefix).items() if not k.startswith(_TRAINING_ONLY)}
        try:
            config = vae_config_from_state_dict(state)
        except (KeyError, IndexError) as exc:
            raise CheckpointError(f"{path}: lacks the VAE tensor {exc.args[0]!r} its architecture is read from; the "
                                  "file is incomplete or not a VAE.") from None
        vae = build(AutoencoderKL, config, state, "VAE", prefix)
        loaded = LoadedVae(vae, config, _stated_scale(path), str(path))
    vae.to(device=device, dtype=dtype)
    if prepack is None:
        prepack = next(vae.parameters()).device.type == "cpu"
    if prepack:
        prepack_convolutions(vae)
    return loaded


def _stated_scale(path: Path) -> float | None:
    """The scale factor a safetensors file's header states (written by this package), else None."""
    try:
        return from_header(read_header(path), path).scale_factor
    except CheckpointError:
        return None


def check_vae_fits(loaded: LoadedVae, config) -> None:
    """Refuse (:class:`CheckpointError`, one line) a VAE that cannot serve a model of ``config``
    (a :class:`~diffusion_notes.models.config.StableDiffusionConfig`): other latent channels, another
    downsampling factor, other image channels, or a stated scale factor that is not the model's."""
    mine, theirs = config.vae, loaded.config
    where = f"VAE {loaded.source}"
    if theirs.embed_dim != mine.embed_dim:
        hint = " (SD3 / Flux's 16-channel VAE?)" if theirs.embed_dim == 16 else ""
        raise CheckpointError(f"{where}: encodes {theirs.embed_dim} latent channels{hint}; this {config.family} "
                              f"model's UNet reads {mine.embed_dim}: a VAE of another model family.")
    if len(theirs.ch_mult) != len(mine.ch_mult):
        raise CheckpointError(f"{where}: downsamples by {2 ** (len(theirs.ch_mult) - 1)}, this model's VAE by "
                              f"{2 ** (len(mine.ch_mult) - 1)}: a VAE of another model family.")
    if (theirs.in_channels, theirs.out_ch) != (mine.in_channels, mine.out_ch):
        raise CheckpointError(f"{where}: reads {theirs.in_channels} and writes {theirs.out_ch} image channels, this "
                              f"model's VAE {mine.in_channels} and {mine.out_ch}.")
    if loaded.scale_factor is not None and abs(loaded.scale_factor - config.scale_factor) > 1e-6 * config.scale_factor:
        family = {0.13025: " (SDXL's)", 0.18215: " (SD 1.x/2.x's)"}.get(round(loaded.scale_factor, 5), "")
        raise CheckpointError(f"{where}: made for latents scaled by {loaded.scale_factor}{family}, this "
                              f"{config.family} model's are scaled by {config.scale_factor}: a VAE of another "
                              "model family (it would decode washed-out or noisy images).")


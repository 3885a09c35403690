r"""Stable Diffusion as one object: UNet, autoencoder, prompt encoder and noise schedule.

Latent diffusion (Rombach et al. 2022) samples latents :math:`z_0` with the UNet
:math:`\epsilon_\theta(z_t, t, \tau_\theta(y))` and decodes them with :math:`\mathcal D`. This class
only loads, holds and saves the parts; sampling lives in ``diffusion_notes.sampling``.

Two ways in, two ways out:

* ``from_pretrained(folder)`` / ``save_pretrained(folder)``: the diffusers folder layout
  (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``);
* ``from_single_file(path)`` / ``save_single_file(path)``: one original checkpoint with CompVis
  names (``model.diffusion_model.*``, ``first_stage_model.*``, the text encoder(s)).

Weights are never allocated twice on load: every network is built on the ``meta`` device and
receives the memory-mapped tensors with ``load_state_dict(assign=True)`` (a dtype cast, e.g. of an
fp16 file to the default float32, makes the one copy that is kept).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import pipeline
from .checkpoints import diffusers_layout as layout
from .checkpoints import detect
from .checkpoints.metadata import ModelMetadata, from_header, read_header, to_header
from .checkpoints.io import CheckpointError, load_state_dict, pick_ema, save_state_dict
from .checkpoints.openclip import openclip_to_transformers, transformers_to_openclip
from .models.config import SCALE_FACTORS, TEXT_SPECS, AutoencoderConfig, UNetConfig
from .models.embeddings import size_embedding
from .models.text import PromptEncoder, clip_transformer, materialize_position_ids
from .models.unet import UNetModel
from .models.vae import AutoencoderKL
from .schedules import DIFFUSERS_NAMES, SD_BETA_RANGE, NoiseSchedule

__all__ = ["StableDiffusion", "StableDiffusionConfig"]

#: Hugging Face repos whose tokenizers single files use: (repo id, subfolder) per text encoder.
TOKENIZER_REPOS = {
    "sd1": (("openai/clip-vit-large-patch14", ""),),
    "sd2": (("stabilityai/stable-diffusion-2-1", "tokenizer"),),
    "sdxl": (("openai/clip-vit-large-patch14", ""), ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "")),
}
_PREDICTION_NAMES = {"eps": "eps", "epsilon": "eps", "v": "v", "v_prediction": "v"}
_DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction"}
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "model.fp16.safetensors", "diffusion_pytorch_model.bin", "pytorch_model.bin")


@dataclass(frozen=True)
class StableDiffusionConfig:
    """Everything needed to rebuild the networks and interpret their output."""

    family: str
    unet: UNetConfig
    vae: AutoencoderConfig
    prediction_type: str = "eps"
    scale_factor: float = 0.18215
    #: (height, width) in pixels the model was trained at; None = the family's release (pipeline.default_size).
    native_size: tuple[int, int] | None = None


# --------------------------------------------------------------------------------------------
# building modules without allocating weights twice
# --------------------------------------------------------------------------------------------


def _load_into(module: nn.Module, state_dict: dict, what: str, prefix: str) -> nn.Module:
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


def _build(cls, config, state_dict: dict, what: str, prefix: str) -> nn.Module:
    with torch.device("meta"):
        module = cls(config)
    return _load_into(module, state_dict, what, prefix)


def _build_clip(config, state_dict: dict, with_projection: bool, what: str, prefix: str) -> nn.Module:
    """A transformers CLIP text model from its ``CLIPTextConfig`` and transformers-layout weights."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with torch.device("meta"):
        model = cls(config)
    # transformers >= 5.6 saves CLIPTextModel without the "text_model." level; accept both spellings.
    wrapped = hasattr(model, "text_model")
    state_dict = {_clip_key(k, wrapped): v for k, v in state_dict.items() if "position_ids" not in k}
    if not with_projection:
        state_dict.pop("text_projection.weight", None)
    _load_into(model, state_dict, what, prefix)
    materialize_position_ids(model)
    return model


def _clip_key(key: str, wrapped: bool) -> str:
    bare = key.removeprefix("text_model.")
    if bare.startswith("text_projection"):
        return bare
    return "text_model." + bare if wrapped else bare


def _clip_state_dict(encoder: nn.Module) -> dict:
    """The encoder's weights with transformers' classic ``text_model.`` names."""
    return {_clip_key(k, True): v for k, v in encoder.state_dict().items() if "position_ids" not in k}


def _token_ids(tokenizer) -> dict:
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


# --------------------------------------------------------------------------------------------
# files and folders
# --------------------------------------------------------------------------------------------


def _weights_file(folder: Path) -> Path:
    for name in _WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no weights file ({', '.join(_WEIGHT_NAMES[:2])} or .bin); "
                          "the diffusers folder is incomplete.")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a diffusers folder needs it (is this the model's root folder?).")
    return json.loads(path.read_text())


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


# What from_pretrained reads from a hub repo (not the safety checker, EMA or fp16 variants).
_HUB_PATTERNS = ["model_index.json", "scheduler/*", "tokenizer*/*"] + [
    f"{part}/{name}" for part in ("unet", "vae", "text_encoder", "text_encoder_2")
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "model.safetensors")
]


def _resolve_folder(name_or_path) -> Path:
    """A local folder, or a hub id resolved through the Hugging Face cache (then the hub when online)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    from huggingface_hub import snapshot_download

    for local_only in (True,) if _offline() else (True, False):
        try:
            return Path(snapshot_download(str(name_or_path), allow_patterns=_HUB_PATTERNS,
                                          local_files_only=local_only, cache_dir=os.environ.get("HF_HUB_CACHE")))
        except Exception:  # not cached / no network / unknown or gated repo: report once below
            continue
    why = "HF_HUB_OFFLINE=1 and it is not in the cache" if _offline() else "it is not cached and the download failed"
    raise CheckpointError(f"{name_or_path!r} is not a local folder and {why}; pass a local diffusers folder "
                          "(with model_index.json) or use StableDiffusion.from_single_file('model.safetensors').")


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path}: already exists; pass overwrite=True to replace it, or choose another path.")


def _load_tokenizer(folder, pad_token: str | None = None):
    from transformers import CLIPTokenizer

    folder = Path(folder)
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not has_bpe and not (folder / "tokenizer.json").is_file():
        # transformers would silently build a 2-token tokenizer from nothing; refuse instead.
        raise CheckpointError(f"{folder}: no CLIP tokenizer here (needs tokenizer.json, or vocab.json and "
                              "merges.txt); pass a tokenizer folder or a diffusers model folder.")
    overrides = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, **overrides)


def _hub_tokenizer(repo: str, subfolder: str, pad_token: str | None):
    """A tokenizer from the Hugging Face cache, else the hub when online; None when neither has it."""
    from huggingface_hub import snapshot_download

    patterns = [f"{subfolder}/*.json", f"{subfolder}/*.txt"] if subfolder else ["*.json", "*.txt"]
    cache_dir = os.environ.get("HF_HUB_CACHE")  # read now, so a changed cache location is honoured
    for local_only in (True,) if _offline() else (True, False):
        try:
            root = snapshot_download(repo, allow_patterns=patterns, local_files_only=local_only, cache_dir=cache_dir)
            return _load_tokenizer(Path(root) / subfolder, pad_token)
        except Exception:  # not cached / unreachable / incomplete: try the next source, then report once
            continue
    return None


def _pad_tokens(family: str) -> list[str | None]:
    """open_clip's tokenizer pads with id 0 (``"!"``), OpenAI CLIP's with end-of-text; SD 2.x and SDXL's
    second encoder read the padded positions, so the padding token changes their context."""
    return [None if prefix.endswith(".transformer.") else "!" for prefix in detect.TEXT_PREFIXES[family]]


def _single_file_tokenizers(family: str, tokenizer) -> list:
    """Tokenizers for a single file: ``tokenizer=`` folder, else the HF cache, else the hub."""
    pads = _pad_tokens(family)
    if tokenizer is not None:
        root = Path(tokenizer)
        if (root / "tokenizer").is_dir():  # a diffusers folder: its tokenizer/ (and tokenizer_2/) as saved
            names = ["tokenizer", "tokenizer_2"][: len(pads)]
            # A folder without tokenizer_2/ lends its tokenizer/ to the second encoder, with that encoder's padding.
            return [_load_tokenizer(root / n) if (root / n).is_dir() else _load_tokenizer(root / "tokenizer", pad)
                    for n, pad in zip(names, pads)]
        return [_load_tokenizer(root, pad) for pad in pads]
    found = [_hub_tokenizer(repo, sub, pad) for (repo, sub), pad in zip(TOKENIZER_REPOS[family], pads)]
    if any(t is None for t in found):
        repos = " and ".join(f"{r}" + (f" (subfolder {s})" if s else "") for r, s in TOKENIZER_REPOS[family])
        raise CheckpointError(f"no tokenizer for this {family} checkpoint: pass tokenizer='path/to/folder' (a tokenizer "
                              f"folder or a diffusers model folder), or put {repos} in the Hugging Face cache, "
                              "or go online (unset HF_HUB_OFFLINE) so it can be downloaded.")
    return found


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------


class StableDiffusion(nn.Module):
    """UNet + VAE + prompt encoder of one Stable Diffusion model (``family`` "sd1", "sd2" or "sdxl").

    Attributes other code relies on:

    * ``unet(x, t, context, y=None)``: eps or v (see ``prediction_type``), shaped like ``x``;
    * ``vae.encode(x) -> DiagonalGaussianDistribution``, ``vae.decode(z)`` (unscaled latents);
    * ``encode_prompt(prompts) -> (context, pooled)``; ``pooled`` is None except for SDXL;
    * ``schedule`` (NoiseSchedule), ``prediction_type`` ("eps" or "v"), ``scale_factor``, ``config``,
      ``family``, ``device``, ``dtype``, ``tokenizer`` / ``tokenizers``, ``text_encoders``.
    """

    def __init__(self, config: StableDiffusionConfig, unet: UNetModel, vae: AutoencoderKL,
                 prompt_encoder: PromptEncoder, schedule: NoiseSchedule | None = None):
        super().__init__()
        self.config = config
        self.unet = unet
        self.vae = vae
        self.prompt_encoder = prompt_encoder
        self.schedule = schedule or NoiseSchedule.stable_diffusion()

    # -- plain views of the config -----------------------------------------------------------
    family = property(lambda self: self.config.family)
    prediction_type = property(lambda self: self.config.prediction_type)
    scale_factor = property(lambda self: self.config.scale_factor)
    tokenizers = property(lambda self: self.prompt_encoder.tokenizers)
    tokenizer = property(lambda self: self.prompt_encoder.tokenizers[0])
    text_encoders = property(lambda self: self.prompt_encoder.text_encoders)
    device = property(lambda self: self.unet.out[2].weight.device)
    dtype = property(lambda self: self.unet.out[2].weight.dtype)

    # -- conditioning ------------------------------------------------------------------------
    def encode_prompt(self, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(context, pooled)``: ``context`` is ``(B, 77, 768)`` (SD 1.x), ``(B, 77, 1024)`` (SD 2.x) or
        ``(B, 77, 2048)`` (SDXL); ``pooled`` is SDXL's ``(B, 1280)`` bigG projection, else None."""
        context, pooled = self.prompt_encoder(prompts)
        return context.to(self.dtype), (pooled.to(self.dtype) if pooled is not None else None)

    def sdxl_label(self, pooled: torch.Tensor, original_size: tuple[int, int], crop_top_left: tuple[int, int] = (0, 0),
                   target_size: tuple[int, int] | None = None) -> torch.Tensor:
        """SDXL's ``y`` for ``unet(..., y=)``: ``cat(pooled, size_embedding(add_time_ids))``, ``(B, 2816)``.

        ``add_time_ids = (*original_size, *crop_top_left, *target_size)`` in pixels, (height, width)
        order (Podell et al. 2023, Sec. 2.2; diffusers ``_get_add_time_ids``).
        """
        ids = torch.tensor([*original_size, *crop_top_left, *(target_size or original_size)], dtype=torch.float32)
        ids = ids.to(pooled.device).expand(pooled.shape[0], 6)
        sizes = size_embedding(ids, self.config.unet.addition_time_embed_dim)
        return torch.cat([pooled.float(), sizes], dim=-1).to(self.dtype)

    def encode_image(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Image in [-1, 1] -> diffusion-model latents ``scale_factor * z``, ``z ~ q(z|x)`` (float32; see
        :func:`diffusion_notes.pipeline.encode_image`: the noise comes from ``generator``'s device)."""
        if generator is None:
            generator = torch.Generator()
            generator.seed()  # a fresh random seed, as torch.randn without a generator would behave
        return pipeline.encode_image(self, image, generator)

    # -- generation (diffusion_notes/pipeline.py) ---------------------------------------------

    def txt2img(self, *args, **kwargs):
        """Text-to-image; see :func:`diffusion_notes.pipeline.txt2img` for the arguments."""
        return pipeline.txt2img(self, *args, **kwargs)

    def img2img(self, *args, **kwargs):
        """Image-to-image; see :func:`diffusion_notes.pipeline.img2img` for the arguments."""
        return pipeline.img2img(self, *args, **kwargs)

    def inpaint(self, *args, **kwargs):
        """Inpainting; see :func:`diffusion_notes.pipeline.inpaint` for the arguments."""
        return pipeline.inpaint(self, *args, **kwargs)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion-model latents -> float32 image in [-1, 1], not clamped (:func:`diffusion_notes.pipeline.decode`,
        with its float32 retry when fp16 overflows)."""
        return pipeline.decode(self, latents)

    def to(self, device=None, dtype=None):
        """Move/cast the networks (the schedule stays float64: samplers divide by its buffers)."""
        if isinstance(device, torch.dtype):  # model.to(torch.float16), as with nn.Module
            device, dtype = None, device
        self.unet.to(device=device, dtype=dtype)
        self.vae.to(device=device, dtype=dtype)
        self.prompt_encoder.to(device=device, dtype=dtype)
        return self

    # -- diffusers folders -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder_or_hub_id, torch_dtype: torch.dtype | None = None, device=None,
                        prediction_type: str | None = None) -> "StableDiffusion":
        """Load a diffusers-layout folder (or a hub id, through the HF cache / the hub when online).

        Reads safetensors (``.bin`` through ``torch.load(weights_only=True)``); ``torch_dtype=None``
        means float32. ``prediction_type`` ("eps"/"v") overrides the scheduler config's.
        """
        root = _resolve_folder(folder_or_hub_id)
        family = _folder_family(_read_json(root / "model_index.json"), root)
        unet_config = layout.unet_config_from_diffusers(_read_json(root / "unet" / "config.json"))
        vae_json = _read_json(root / "vae" / "config.json")
        vae_config = layout.vae_config_from_diffusers(vae_json)
        scheduler = _read_json(root / "scheduler" / "scheduler_config.json")
        config = StableDiffusionConfig(
            family, unet_config, vae_config,
            _prediction(prediction_type or scheduler.get("prediction_type", "epsilon")),
            vae_json.get("scaling_factor", SCALE_FACTORS[family]),
        )
        unet_sd = layout.unet_from_diffusers(load_state_dict(_weights_file(root / "unet")), unet_config)
        vae_sd = layout.vae_from_diffusers(load_state_dict(_weights_file(root / "vae")), vae_config)
        model = cls(config, _build(UNetModel, unet_config, unet_sd, "UNet", "unet/"),
                    _build(AutoencoderKL, vae_config, vae_sd, "VAE", "vae/"),
                    _folder_prompt_encoder(root, family), _schedule_from_scheduler(scheduler))
        return model.to(device, torch_dtype or torch.float32)

    def save_pretrained(self, folder, overwrite: bool = False) -> None:
        """Write the diffusers folder layout (readable by diffusers' ``StableDiffusion(XL)Pipeline``)."""
        root = Path(folder)
        _refuse_existing(root, overwrite)
        # Everything that can refuse (unsupported configs or schedules) runs before the first file is written.
        unet_json = layout.unet_config_to_diffusers(self.config.unet)
        vae_json = layout.vae_config_to_diffusers(self.config.vae, self.scale_factor)
        scheduler_json, model_index = self._scheduler_json(), self._model_index()
        self._write_part(root / "unet", layout.unet_to_diffusers(self.unet.state_dict(), self.config.unet),
                         unet_json, "diffusion_pytorch_model.safetensors")
        self._write_part(root / "vae", layout.vae_to_diffusers(self.vae.state_dict(), self.config.vae),
                         vae_json, "diffusion_pytorch_model.safetensors")
        for index, (encoder, tokenizer) in enumerate(zip(self.text_encoders, self.tokenizers)):
            suffix = f"_{index + 1}" if index else ""
            encoder.save_pretrained(root / f"text_encoder{suffix}")
            tokenizer.save_pretrained(root / f"tokenizer{suffix}")
        self._write_json(root / "scheduler" / "scheduler_config.json", scheduler_json)
        self._write_json(root / "model_index.json", model_index)

    @staticmethod
    def _write_part(folder: Path, state_dict: dict, config: dict, name: str) -> None:
        save_state_dict(state_dict, folder / name, overwrite=True)
        StableDiffusion._write_json(folder / "config.json", config)

    @staticmethod
    def _write_json(path: Path, data: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))

    def _scheduler_json(self) -> dict:
        # scaled_linear betas start and end exactly at linear_start and linear_end.
        steps, start, end = self.schedule.num_timesteps, float(self.schedule.betas[0]), float(self.schedule.betas[-1])
        rebuilt = NoiseSchedule.from_name("scaled_linear", steps, linear_start=start, linear_end=end)
        if not torch.allclose(rebuilt.betas, self.schedule.betas, rtol=1e-9, atol=0):
            raise CheckpointError("this model's noise schedule is not a scaled_linear one; diffusers' scheduler "
                                  "config cannot express it, so save with save_single_file instead.")
        return {"_class_name": "DDIMScheduler", "num_train_timesteps": steps, "beta_start": start, "beta_end": end,
                "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
                "steps_offset": 1, "prediction_type": _DIFFUSERS_PREDICTION[self.prediction_type]}

    def _model_index(self) -> dict:
        xl = self.family == "sdxl"
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

    # -- original single files ---------------------------------------------------------------
    @classmethod
    def from_single_file(cls, path, config=None, tokenizer=None, prediction_type: str | None = None,
                         torch_dtype: torch.dtype | None = None, device=None, use_ema: bool = False) -> "StableDiffusion":
        """Load an original (CompVis / sgm) checkpoint: ``.safetensors`` or ``.ckpt``.

        The architecture is read from tensor shapes (``checkpoints.detect``). What shapes cannot show
        (UNet and CLIP attention heads, ``scale_factor``, the prediction type, the native size) comes,
        in this order of precedence, from the arguments, from ``config`` (an optional original YAML:
        ``v1-inference.yaml``, ``v2-inference-v.yaml``, ``sd_xl_base.yaml``, whose heads,
        ``parameterization`` and ``scale_factor`` are honoured), from the file's safetensors
        ``__metadata__`` (written by :meth:`save_single_file`; ``checkpoints.metadata``), and last from
        the family's release. So a released SD 2.x 768-v file, which carries no metadata, needs the
        YAML or ``prediction_type="v"``. A CLIP text encoder of a width no release has, with no head
        count in the metadata (or in the ``text_encoder/config.json`` of a diffusers folder given as
        ``tokenizer``), is refused rather than guessed.
        ``tokenizer``: a tokenizer folder or a diffusers model folder; otherwise the tokenizers of
        ``TOKENIZER_REPOS`` from the Hugging Face cache (or the hub when online). Each tokenizer reads
        as many positions as its encoder has (77 for every release).
        ``use_ema=False`` (default) uses ``model.diffusion_model.*`` as stored, which in CompVis's
        released files already are the EMA weights; ``use_ema=True`` takes ``model_ema.*`` instead.
        """
        state_dict = pick_ema(load_state_dict(path), use_ema)
        meta = from_header(read_header(path), path)
        arch = detect.detect_architecture(state_dict)
        yaml = detect.read_original_yaml(config) if config is not None else detect.OriginalConfig()
        unet_config = detect.apply_metadata_heads(arch.unet, meta.num_heads, meta.num_head_channels)
        unet_config = detect.apply_yaml_unet(unet_config, yaml.unet_params, config)
        prediction = prediction_type or (yaml.prediction_type if config is not None else None)
        sd_config = StableDiffusionConfig(
            arch.family, unet_config, arch.vae, _prediction(prediction or meta.prediction_type or "eps"),
            yaml.scale_factor or meta.scale_factor or SCALE_FACTORS[arch.family], meta.native_size,
        )
        tokenizers = _single_file_tokenizers(arch.family, tokenizer)
        unet = _build(UNetModel, unet_config, detect.strip_prefix(state_dict, detect.UNET_PREFIX), "UNet",
                      detect.UNET_PREFIX)
        # Training checkpoints keep the autoencoder's LPIPS/discriminator loss under first_stage_model.loss.
        vae_sd = {k: v for k, v in detect.strip_prefix(state_dict, detect.VAE_PREFIX).items() if not k.startswith("loss.")}
        vae = _build(AutoencoderKL, arch.vae, vae_sd, "VAE", detect.VAE_PREFIX)
        text_heads = meta.text_heads or _folder_text_heads(tokenizer, len(tokenizers))
        encoders = _single_file_text_encoders(state_dict, arch.family, tokenizers, text_heads)
        schedule = NoiseSchedule.from_name("scaled_linear", yaml.timesteps, linear_start=yaml.linear_start,
                                           linear_end=yaml.linear_end)
        model = cls(sd_config, unet, vae, PromptEncoder(tokenizers, encoders, TEXT_SPECS[arch.family]), schedule)
        return model.to(device, torch_dtype or torch.float32)

    def save_single_file(self, path, overwrite: bool = False, metadata: dict[str, str] | None = None) -> None:
        """Write one ``.safetensors`` in the original layout (what ``from_single_file`` of diffusers,
        ComfyUI or A1111 read): ``model.diffusion_model.*``, ``first_stage_model.*`` and the text
        encoder(s) under the family's CompVis / sgm prefixes.

        The settings the tensors cannot show (scale factor, prediction type, UNet and CLIP heads,
        native size) go into the safetensors ``__metadata__`` header (``checkpoints.metadata``), with
        ``metadata`` (more string pairs, e.g. how the model was trained) added to them."""
        path = Path(path)
        _refuse_existing(path, overwrite)
        state_dict = {detect.UNET_PREFIX + k: v for k, v in self.unet.state_dict().items()}
        state_dict.update({detect.VAE_PREFIX + k: v for k, v in self.vae.state_dict().items()})
        state_dict.update(self._original_text_state_dict())
        save_state_dict(state_dict, path, overwrite=overwrite, metadata={**(metadata or {}), **self._header()})

    def _header(self) -> dict[str, str]:
        c = self.config
        return to_header(ModelMetadata(
            scale_factor=c.scale_factor, prediction_type=c.prediction_type, num_heads=c.unet.num_heads,
            num_head_channels=c.unet.num_head_channels, native_size=c.native_size,
            text_heads=tuple(e.config.num_attention_heads for e in self.text_encoders)))

    def _original_text_state_dict(self) -> dict:
        out = {}
        for encoder, prefix in zip(self.text_encoders, detect.TEXT_PREFIXES[self.family]):
            weights = _clip_state_dict(encoder)
            if prefix.endswith(".model."):
                if self.family == "sd2":
                    weights.update(_unused_last_layer(encoder))
                out.update(transformers_to_openclip(weights, prefix=prefix))
            else:
                out.update({prefix + k: v for k, v in weights.items()})
        return out


# --------------------------------------------------------------------------------------------
# helpers of the loaders
# --------------------------------------------------------------------------------------------


def _prediction(name: str) -> str:
    if name not in _PREDICTION_NAMES:
        raise ValueError(f"prediction_type={name!r}: use 'eps' or 'v' (diffusers: 'epsilon', 'v_prediction').")
    return _PREDICTION_NAMES[name]


def _folder_family(model_index: dict, root: Path) -> str:
    """sdxl when there is a second text encoder, else sd1/sd2 by the context width of the UNet."""
    if model_index.get("_class_name", "").startswith("StableDiffusionXL") or "text_encoder_2" in model_index:
        return "sdxl"
    if "text_encoder" not in model_index:
        raise CheckpointError(f"{root}: model_index.json describes {model_index.get('_class_name')!r}, "
                              "not a Stable Diffusion 1.x/2.x/XL pipeline.")
    text_config = _read_json(root / "text_encoder" / "config.json")
    # OpenCLIP ViT-H (SD 2.x) uses exact gelu; OpenAI CLIP ViT-L (SD 1.x) quick_gelu.
    return "sd2" if text_config.get("hidden_act") == "gelu" else "sd1"


def _schedule_from_scheduler(scheduler: dict) -> NoiseSchedule:
    name = DIFFUSERS_NAMES.get(scheduler.get("beta_schedule", "scaled_linear"))
    if name is None:
        raise CheckpointError(f"unsupported beta_schedule {scheduler.get('beta_schedule')!r} in scheduler_config.json.")
    return NoiseSchedule.from_name(name, scheduler.get("num_train_timesteps", 1000),
                                   linear_start=scheduler.get("beta_start", SD_BETA_RANGE[0]),
                                   linear_end=scheduler.get("beta_end", SD_BETA_RANGE[1]))


def _folder_prompt_encoder(root: Path, family: str) -> PromptEncoder:
    from transformers import CLIPTextConfig

    specs = TEXT_SPECS[family]
    tokenizers, encoders = [], []
    for index, spec in enumerate(specs):
        suffix = f"_{index + 1}" if index else ""
        folder = root / f"text_encoder{suffix}"
        _read_json(folder / "config.json")  # a clear error if it is missing
        config = CLIPTextConfig.from_pretrained(str(folder))
        weights = load_state_dict(_weights_file(folder))
        encoders.append(_build_clip(config, weights, spec.pooled, "text encoder", f"text_encoder{suffix}/"))
        tokenizers.append(_load_tokenizer(root / f"tokenizer{suffix}"))
    return PromptEncoder(tokenizers, encoders, specs)


def _folder_text_heads(tokenizer, count: int) -> tuple[int, ...] | None:
    """The CLIP head counts of a diffusers folder given as ``tokenizer=`` (its ``text_encoder*/config.json``)."""
    if tokenizer is None:
        return None
    configs = [Path(tokenizer) / f"text_encoder{f'_{i + 1}' if i else ''}" / "config.json" for i in range(count)]
    if not all(c.is_file() for c in configs):
        return None
    return tuple(int(json.loads(c.read_text())["num_attention_heads"]) for c in configs)


def _single_file_text_encoders(state_dict: dict, family: str, tokenizers: list,
                               heads: tuple[int, ...] | None = None) -> list[nn.Module]:
    """The CLIP text encoder(s) of a single file; ``heads`` (from the metadata) per encoder, else the
    release's. Each tokenizer is set to read as many positions as its encoder has."""
    from transformers import CLIPTextConfig

    prefixes = detect.TEXT_PREFIXES[family]
    if heads is not None and len(heads) != len(prefixes):
        raise CheckpointError(f"the metadata gives {len(heads)} text-encoder head counts for a {family} "
                              f"checkpoint with {len(prefixes)} text encoder(s); fix the file's metadata.")
    encoders = []
    for index, (prefix, spec) in enumerate(zip(prefixes, TEXT_SPECS[family])):
        if prefix.endswith(".model."):  # open_clip layout (SD 2.x ViT-H, SDXL bigG)
            weights = openclip_to_transformers(state_dict, prefix=prefix)
            act = "gelu"
        else:
            weights = detect.strip_prefix(state_dict, prefix)
            act = "quick_gelu"
        if not weights:
            raise CheckpointError(f"checkpoint has no text encoder under {prefix!r}; a full {family} checkpoint has one.")
        kwargs = detect.clip_config_kwargs(weights, act, None if heads is None else heads[index], prefix)
        kwargs |= _token_ids(tokenizers[index])
        if family == "sd2":
            weights, kwargs = _drop_last_layer(weights, kwargs)
        encoders.append(_build_clip(CLIPTextConfig(**kwargs), weights, spec.pooled, "text encoder", prefix))
        tokenizers[index].model_max_length = kwargs["max_position_embeddings"]  # 77 for every release
    return encoders


def _drop_last_layer(weights: dict, kwargs: dict) -> tuple[dict, dict]:
    """SD 2.x reads the penultimate OpenCLIP layer; keep the layers below it (diffusers' SD2 convention)."""
    last = kwargs["num_hidden_layers"] - 1
    kept = {k: v for k, v in weights.items() if f"encoder.layers.{last}." not in k}
    return kept, kwargs | {"num_hidden_layers": last}


def _unused_last_layer(encoder: nn.Module) -> dict:
    """The OpenCLIP layer SD 2.x never reads, written as an all-zero block so the file has CompVis's layer count.

    A pre-norm residual block whose output projections are zero is the identity; and since SD 2.x
    takes the penultimate hidden state, this layer's values never reach the UNet anyway.
    """
    layer = clip_transformer(encoder).encoder.layers[-1]
    index = len(clip_transformer(encoder).encoder.layers)
    return {f"text_model.encoder.layers.{index}.{k}": torch.zeros_like(v, device="cpu")
            for k, v in layer.state_dict().items()}

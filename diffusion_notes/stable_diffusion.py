r"""Stable Diffusion as one object: UNet, autoencoder, prompt encoder and noise schedule.

Latent diffusion (Rombach et al. 2022) samples latents :math:`z_0` with the UNet
:math:`\epsilon_\theta(z_t, t, \tau_\theta(y))` and decodes them with :math:`\mathcal D`. This class
only holds the parts; sampling lives in ``diffusion_notes.sampling``, the generation wiring in
``diffusion_notes.pipeline`` and the readers and writers in ``diffusion_notes.checkpoints``:

* ``from_pretrained(folder)`` / ``save_pretrained(folder)``: the diffusers folder layout
  (:mod:`diffusion_notes.checkpoints.diffusers_folder`);
* ``from_single_file(path)`` / ``save_single_file(path)``: one original checkpoint with CompVis
  names (:mod:`diffusion_notes.checkpoints.single_file`).

What the pipeline relies on is listed in the docstring of :class:`StableDiffusion`.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn

from . import decoding, pipeline
from .errors import SettingsError
from .models.config import StableDiffusionConfig  # defined with the model configs; re-exported here
from .models.embeddings import size_embedding
from .models.text import PromptEncoder
from .models.unet import UNetModel
from .models.vae import AutoencoderKL
from .schedules import NoiseSchedule

__all__ = ["StableDiffusion", "StableDiffusionConfig"]


def _pipeline_method(function):
    """``function(sd, ...)`` of :mod:`diffusion_notes.pipeline` as a method; ``inspect.signature`` and
    ``help()`` follow ``__wrapped__`` to the function's explicit keyword-only signature."""

    @functools.wraps(function)
    def method(self, *args, **kwargs):
        return function(self, *args, **kwargs)

    return method


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
    # any UNet parameter: all share one device and dtype
    device = property(lambda self: next(self.unet.parameters()).device)
    dtype = property(lambda self: next(self.unet.parameters()).dtype)

    # -- conditioning ------------------------------------------------------------------------
    def encode_prompt(self, prompts: str | list[str], *, prompt_syntax: str = "plain", clip_skip: int = 1,
                      min_chunks: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(context, pooled)``: ``context`` is ``(B, 77, 768)`` (SD 1.x), ``(B, 77, 1024)`` (SD 2.x) or
        ``(B, 77, 2048)`` (SDXL); ``pooled`` is SDXL's ``(B, 1280)`` bigG projection, else None.
        ``prompt_syntax="a1111"`` (``(word:1.2)``, 75-token chunks: ``(B, 77 k, D)``), ``clip_skip`` and
        ``min_chunks``: :meth:`diffusion_notes.models.text.PromptEncoder.encode`."""
        context, pooled = self.prompt_encoder(prompts, prompt_syntax=prompt_syntax, clip_skip=clip_skip,
                                              min_chunks=min_chunks)
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
        :func:`diffusion_notes.decoding.encode_image`: the noise comes from ``generator``'s device)."""
        if generator is None:
            generator = torch.Generator()
            generator.seed()  # a fresh random seed, as torch.randn without a generator would behave
        return decoding.encode_image(self, image, generator)

    # -- generation (diffusion_notes/pipeline.py) ---------------------------------------------

    # The pipeline functions as methods, with their own signatures and docstrings (help() shows every option).
    txt2img = _pipeline_method(pipeline.txt2img)
    img2img = _pipeline_method(pipeline.img2img)
    inpaint = _pipeline_method(pipeline.inpaint)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion-model latents -> float32 image in [-1, 1], not clamped (:func:`diffusion_notes.decoding.decode`,
        with its float32 retry when fp16 overflows)."""
        return decoding.decode(self, latents)

    def to(self, device=None, dtype=None):
        """Move/cast the networks (the schedule stays float64: samplers divide by its buffers)."""
        if isinstance(device, torch.dtype):  # model.to(torch.float16), as with nn.Module
            device, dtype = None, device
        self.unet.to(device=device, dtype=dtype)
        self.vae.to(device=device, dtype=dtype)
        self.prompt_encoder.to(device=device, dtype=dtype)
        return self

    # -- diffusers folders (checkpoints/diffusers_folder.py) -----------------------------------
    @classmethod
    def from_pretrained(cls, folder_or_hub_id, torch_dtype: torch.dtype | None = None, device=None,
                        prediction_type: str | None = None, prepack: bool | None = None) -> "StableDiffusion":
        """Load a diffusers-layout folder (or a hub id, through the HF cache / the hub when online).

        Reads safetensors (``.bin`` through ``torch.load(weights_only=True)``); ``torch_dtype=None``
        means the device's default (:func:`diffusion_notes.precision.default_dtype`: fp16 on CUDA,
        bf16 on CPUs with native bf16, else fp32; diffusers' default is always fp32). ``prediction_type`` ("eps"/"v") overrides the scheduler config's.
        ``prepack``: see :meth:`from_single_file`.
        """
        from .checkpoints.diffusers_folder import load_diffusers_folder

        parts = load_diffusers_folder(folder_or_hub_id, torch_dtype=torch_dtype, device=device,
                                      prediction_type=prediction_type, prepack=prepack)
        return cls(parts.config, parts.unet, parts.vae, parts.prompt_encoder, parts.schedule)

    def save_pretrained(self, folder, overwrite: bool = False) -> None:
        """Write the diffusers folder layout (readable by diffusers' ``StableDiffusion(XL)Pipeline``)."""
        from .checkpoints.diffusers_folder import save_diffusers_folder

        save_diffusers_folder(self, folder, overwrite=overwrite)

    # -- original single files (checkpoints/single_file.py) -----------------------------------
    @classmethod
    def from_single_file(cls, path, config=None, tokenizer=None, prediction_type: str | None = None,
                         torch_dtype: torch.dtype | None = None, device=None, use_ema: bool = False,
                         prepack: bool | None = None) -> "StableDiffusion":
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
        ``checkpoints.tokenizers.TOKENIZER_REPOS`` from the Hugging Face cache (or the hub when online).
        Each tokenizer reads as many positions as its encoder has (77 for every release).
        ``use_ema=False`` (default) uses ``model.diffusion_model.*`` as stored, which in CompVis's
        released files already are the EMA weights; ``use_ema=True`` takes ``model_ema.*`` instead.
        Weights are never allocated twice: each network is built on the ``meta`` device and receives
        the memory-mapped tensors (``checkpoints.building``).
        ``prepack`` (default: when the model is loaded for the CPU) stores the UNet's and VAE's
        convolution weights reordered for oneDNN once, instead of at every call
        (:mod:`diffusion_notes.models.prepacked`; about 1.5x faster UNet steps on a CPU, no extra
        memory). Such a model is for inference: its convolution weights are not parameters. Load with
        ``prepack=False`` to fine-tune, or call ``models.unpack_convolutions`` on it.
        """
        from .checkpoints.single_file import load_single_file

        parts = load_single_file(path, config=config, tokenizer=tokenizer, prediction_type=prediction_type,
                                 torch_dtype=torch_dtype, device=device, use_ema=use_ema, prepack=prepack)
        return cls(parts.config, parts.unet, parts.vae, parts.prompt_encoder, parts.schedule)

    def save_single_file(self, path, overwrite: bool = False, metadata: dict[str, str] | None = None) -> None:
        """Write one ``.safetensors`` in the original layout (what ``from_single_file`` of diffusers,
        ComfyUI or A1111 read): ``model.diffusion_model.*``, ``first_stage_model.*`` and the text
        encoder(s) under the family's CompVis / sgm prefixes.

        The settings the tensors cannot show (scale factor, prediction type, UNet and CLIP heads,
        native size) go into the safetensors ``__metadata__`` header (``checkpoints.metadata``);
        ``metadata`` adds more string pairs (e.g. how the model was trained)."""
        from .checkpoints.single_file import save_single_file

        save_single_file(self, path, overwrite=overwrite, metadata=metadata)

    # -- VAE swap (checkpoints/vae_file.py) ---------------------------------------------------
    def with_vae(self, vae) -> "StableDiffusion":
        """A model that decodes and encodes with another autoencoder: a new ``StableDiffusion`` with ``vae``
        in place of this one's; **this model is not changed**.

        ``vae``: a :class:`~diffusion_notes.checkpoints.vae_file.LoadedVae` from
        :func:`~diffusion_notes.checkpoints.vae_file.load_vae`, or the path of a VAE file / diffusers folder
        (then read in this model's dtype, onto its device). A VAE of another family (other latent
        channels or downsampling factor, or a stated scale factor that is not this model's: SDXL's
        0.13025 on SD 1.x) raises :class:`~diffusion_notes.errors.CheckpointError`; what can and cannot
        be told is in :mod:`diffusion_notes.checkpoints.vae_file`. The new model keeps this one's scale
        factor, and shares (without copying) its UNet, text encoders, schedule and adapter records: a
        LoRA merged into either is merged into both, and ``unload_loras`` on either restores both.
        diffusers: ``StableDiffusionPipeline.from_pretrained(..., vae=AutoencoderKL.from_single_file(...))``."""
        from .checkpoints.vae_file import LoadedVae, check_vae_fits, load_vae
        from .models.prepacked import PrepackedConv2d

        if not isinstance(vae, LoadedVae):  # read like this model's VAE: dtype, device, prepacked or not
            prepacked = any(isinstance(m, PrepackedConv2d) for m in self.vae.modules())
            vae = load_vae(vae, torch_dtype=self.dtype, device=self.device, prepack=prepacked)
        given = next(vae.vae.parameters())
        if (given.dtype, given.device) != (self.dtype, self.device):
            raise SettingsError("vae", f"the VAE is in {given.dtype} on {given.device}, this model in {self.dtype} on "
                                f"{self.device}; read it with load_vae(path, torch_dtype=sd.dtype, device=sd.device)")
        check_vae_fits(vae, self.config)
        swapped = StableDiffusion(dataclasses.replace(self.config, vae=vae.config), self.unet, vae.vae,
                                  self.prompt_encoder, self.schedule)
        for record in ("_lora_originals", "_applied_loras", "_embeddings"):  # one state for the shared networks
            vars(swapped)[record] = vars(self).setdefault(record, {} if record != "_applied_loras" else [])
        return swapped

    # -- adapters (diffusion_notes/adapters/) --------------------------------------------------
    def load_lora(self, path_or_state_dict, scale: float = 1.0):
        r"""Merge a LoRA file (kohya, PEFT / diffusers, old diffusers; ``.safetensors`` or a weights-only
        pickle) or state dict into the UNet and text encoders: :math:`W \leftarrow W + m\frac{\alpha}{r}BA`
        with ``scale`` as :math:`m` (:func:`diffusion_notes.adapters.lora.load_lora`). LoRAs stack; a bad
        file raises :class:`~diffusion_notes.errors.CheckpointError` and changes nothing. Returns the
        :class:`~diffusion_notes.adapters.lora.AppliedLora` record also appended to :attr:`applied_loras`."""
        from .adapters.lora import load_lora

        return load_lora(self, path_or_state_dict, scale=scale)

    def unload_loras(self) -> None:
        """Restore, exactly, every weight changed by :meth:`load_lora` and empty :attr:`applied_loras`."""
        from .adapters.lora import unload_loras

        unload_loras(self)

    @property
    def applied_loras(self):
        """The merged LoRAs in order (name, scale, sha256, ``short_hash``); see ``adapters.lora.lora_hashes``."""
        from .adapters.lora import applied_loras

        return applied_loras(self)

    def load_textual_inversion(self, path_or_dict, token: str | None = None) -> list[str]:
        """Add a textual-inversion embedding (A1111 ``.pt`` / ``.safetensors``, diffusers ``learned_embeds``,
        SDXL ``clip_l``/``clip_g``) as a new word, by default the file's stem; returns the tokens added
        (:func:`diffusion_notes.adapters.textual_inversion.load_textual_inversion`)."""
        from .adapters.textual_inversion import load_textual_inversion

        return load_textual_inversion(self, path_or_dict, token=token)

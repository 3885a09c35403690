r"""Text-to-image, image-to-image and inpainting: the seed's data flow, end to end.

For SD 1.x, 512x512, ``n_samples = 3`` (the "3 + 3" of the seed: 3 unconditional, 3 conditional rows)::

    prompt ''  -> CLIP ViT-L -> uc  (3, 77, 768)  \
    prompt     -> CLIP ViT-L -> c   (3, 77, 768)  /  cat([uc, c]) -> (3+3, 77, 768)
    x_T ~ N(0, I)                   (3, 4, 64, 64)   drawn from a CPU generator
    for t in the sampler's timesteps:                (sampling.sample: DDIM / PLMS / ...)
        t -> sinusoid -> MLP        (3+3, 1280)      inside the UNet (time_embed)
        e_t_uncond, e_t = unet(cat([x] * 2), t, cat([uc, c])).chunk(2)
        e_t = e_t_uncond + unconditional_guidance_scale * (e_t - e_t_uncond)   (guidance.guided_eps_model)
        x, pred_x0 = sampler update with e_t
    image = VAE.decode(x_0 / scale_factor)  (3, 3, 512, 512) in [-1, 1]

This module only wires the pieces together: the update rules live in ``samplers/`` and run through
:func:`diffusion_notes.sampling.sample`, guidance in :mod:`diffusion_notes.guidance`, the noising of
image-to-image in :func:`diffusion_notes.forward.q_sample`.

Counterparts: CompVis ``scripts/txt2img.py``, ``scripts/img2img.py`` and the SD 2 inpainting script;
diffusers ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ``StableDiffusionImg2ImgPipeline``,
``StableDiffusionInpaintPipeline``.

One path: :func:`generate` runs every generation from a :class:`~diffusion_notes.settings.Request`
(built from the keywords by ``Request.build``, each part checked when made, then checked against the
model's geometry). ``txt2img``, ``img2img`` and ``inpaint`` are thin doors onto it: they differ only in
how they build the request and the initial latents (their ``begin`` functions, which return a
:class:`Start`). Nothing here changes the model it is given: memory options apply inside
:func:`diffusion_notes.memory.memory_context` and are undone, and the LoRAs of a prompt's
``<lora:name:weight>`` tags (``prompt_syntax="a1111"``) are merged inside
:func:`diffusion_notes.adapters.lora.temporary_loras` and taken out exactly afterwards. The VAE ends live in
:mod:`diffusion_notes.decoding`, strength and inpainting's blend in :mod:`diffusion_notes.init_image`,
the PNG text in :mod:`diffusion_notes.infotext`.

Precision: the latents stay float32 between steps and the schedule float64; each UNet call casts its
input to the model's dtype (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32 by default; see
:func:`diffusion_notes.precision.default_dtype`) and its output back.

Why it is over 400 lines: the one generation path and its three doors belong together, and a
third of it is the doors' docstrings, which ``help()`` shows as the reference of every keyword.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .adapters.lora import applied_loras, temporary_loras
from .adapters.textual_inversion import used_embeddings
from .decoding import NonFiniteDecodeWarning, decode, decode_checked, decode_tiled, encode_image
from .errors import CheckpointError, SettingsError
from .geometry import ModelGeometry, default_size, is_inpainting_model, vae_factor
from .guidance import guided_eps_model
from .images import array_to_pil, check_image_and_mask, image_to_tensor, mask_to_tensor, tensor_to_array
from .infotext import ADAPTER_FIELDS, adapter_fields, format_parameters, infotext_fields
from .init_image import NoDenoisingWarning, blend_known_region, noised, strength_grids, strength_timesteps
from .memory import memory_context
from .noise import randn
from .prompts import warn_if_truncated
from .sampling import Trajectory, sample
from .samplers import SamplingGrid
from .settings import (
    IMAGE_SAMPLER,
    IMG2IMG_STRENGTH,
    INPAINT_STRENGTH,
    STRENGTH_RULES,
    ImageSize,
    MemoryOptions,
    Request,
    Seed,
)

__all__ = ["txt2img", "img2img", "inpaint", "generate", "Start", "begin_from_noise", "begin_from_latents",
           "begin_from_image", "begin_inpainting", "Generation", "Request", "DiffusionModel",
           "MemoryOptions", "NonFiniteDecodeWarning", "NonFiniteOutputWarning", "NoDenoisingWarning", "decode",
           "decode_checked", "decode_tiled", "encode_image", "conditioning", "strength_timesteps", "default_size",
           "vae_factor", "is_inpainting_model", "STRENGTH_RULES"]


class DiffusionModel(Protocol):
    """What the pipeline reads from its model (:class:`diffusion_notes.stable_diffusion.StableDiffusion`
    is the one implementation): the three networks, the noise schedule and a few views of the config.

    * ``unet(x, t, context, y=None)`` -> eps or v (``prediction_type``), shaped like ``x``;
    * ``vae.encode(x)`` -> a diagonal Gaussian with ``.sample(generator)``; ``vae.decode(z)`` (unscaled ``z``);
    * ``prompt_encoder`` (moved for text-encoder offloading), ``encode_prompt(prompts) -> (context, pooled)``,
      ``sdxl_label(pooled, original_size, crop, target_size)``, ``tokenizer`` (prompt-length warnings);
    * ``schedule`` (:class:`~diffusion_notes.schedules.NoiseSchedule`), ``config`` (``.unet``, ``.vae``),
      ``family``, ``prediction_type``, ``scale_factor``, ``device``, ``dtype``, ``state_dict()``.
    """

    unet: torch.nn.Module
    vae: torch.nn.Module
    prompt_encoder: torch.nn.Module
    schedule: object
    config: object
    family: str
    prediction_type: str
    scale_factor: float
    device: torch.device
    dtype: torch.dtype
    tokenizer: object

    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def sdxl_label(self, pooled, original_size, crop_top_left=(0, 0), target_size=None) -> torch.Tensor: ...

    def state_dict(self): ...


class NonFiniteOutputWarning(UserWarning):
    """``non_finite="warn"``: the latents or images hold NaN/inf and are returned anyway."""


# --------------------------------------------------------------------------------------------
# what a run starts from, and what it returns
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """How a run begins, as a door's ``begin(sd, request, grid, generator)`` returns it.

    ``x``: the initial latents (x_T for text to image; the noised image latents for img2img);
    ``grid``: the levels to denoise over (all of the request's grid, or its last steps);
    ``c_concat``: channels stacked onto ``x`` at every UNet call (9-channel inpainting models);
    ``step_hook``: after each step (4-channel inpainting's blend); ``records_strength``: whether the
    PNG text carries "Denoising strength" (not for inpainting from pure noise, as AUTOMATIC1111).
    """

    x: torch.Tensor
    grid: SamplingGrid
    c_concat: torch.Tensor | None = None
    step_hook: Callable | None = None
    records_strength: bool = True


@dataclass
class Generation:
    """What a pipeline call returns.

    ``images``: PIL images (empty for ``output="latent"`` / ``"array"``); ``arrays``: ``(B, H, W, 3)``
    float32 in [0, 1] (diffusers ``output_type="np"``; None for ``output="latent"``); ``latents``: the
    final :math:`z_0` ``(B, 4, h, w)`` in float32, before the VAE; ``trajectory``: the latent ``x`` and
    ``pred_x0`` after every step (``return_trajectory``); ``pred_x0_images``: per step, the decoded
    ``pred_x0`` of every sample (``return_trajectory="decoded"``); ``seed``: the seed of the noise
    (drawn at random for ``seed=None`` or -1; None when a ``generator`` was passed); ``request``: the
    checked settings; ``prompts`` / ``settings``: what :meth:`infotext` writes (derived from ``request``).
    """

    images: list
    arrays: np.ndarray | None
    latents: torch.Tensor
    trajectory: Trajectory | None = None
    pred_x0_images: list | None = None
    seed: int | None = None
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    request: Request | None = None

    def infotext(self, index: int = 0, **extra) -> str:
        """AUTOMATIC1111's ``parameters`` text for image ``index`` (``extra``: e.g. ``model="v1-5"``)."""
        batch = len(self.prompts)
        position = {"batch_size": batch, "batch_pos": index} if batch > 1 else {}
        adapters = {k: self.settings[k] for k in ADAPTER_FIELDS if k in self.settings}  # written last, as A1111
        settings = {k: v for k, v in self.settings.items() if k not in ADAPTER_FIELDS}
        return format_parameters(self.prompts[index], self.negative_prompts[index], **settings, **position,
                                 **extra, **adapters)


# --------------------------------------------------------------------------------------------
# conditioning: prompts -> c, uc
# --------------------------------------------------------------------------------------------


def _encode(sd, prompts: list[str], **options) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CLIP features on the UNet's device, in its dtype (the encoders may sit elsewhere: offloading)."""
    context, pooled = sd.encode_prompt(prompts, **options)
    return context.to(sd.device), (pooled.to(sd.device) if pooled is not None else None)


def conditioning(sd, prompts: list[str], negative_prompts: list[str], height: int, width: int,
                 original_size=None, crops_coords_top_left=(0, 0), target_size=None, prompt_syntax: str = "plain",
                 clip_skip: int = 1):
    """``(c, uc)``: dicts of UNet keyword arguments for the prompts and the negative prompts.

    ``context`` (B, 77, 768) for SD 1.x; SDXL adds ``y`` = pooled text + the size/crop embedding of
    ``(original_size, crops_coords_top_left, target_size)`` (default: the image's size, no crop), the
    same for ``c`` and ``uc`` as in diffusers. SDXL's empty negative prompt is all zeros, not the
    features of '' (sgm ``force_uc_zero_embeddings=["txt"]``, diffusers ``force_zeros_for_empty_prompt``).
    ``prompt_syntax="a1111"``: prompts and negative prompts are encoded in as many 77-token chunks as the
    longest of them needs, so ``c`` and ``uc`` have one length ``(B, 77 k, D)`` (AUTOMATIC1111's padding of
    the shorter one); ``clip_skip``: :meth:`diffusion_notes.models.text.PromptEncoder.encode`.
    """
    options = {"prompt_syntax": prompt_syntax, "clip_skip": clip_skip}
    if prompt_syntax == "plain":
        warn_if_truncated(sd.tokenizer, prompts)
        warn_if_truncated(sd.tokenizer, negative_prompts, what="negative prompt")
    else:
        options["min_chunks"] = sd.prompt_encoder.count_chunks(list(prompts) + list(negative_prompts))
    context, pooled = _encode(sd, prompts, **options)
    if sd.family == "sdxl" and not any(negative_prompts):
        uc_context, uc_pooled = torch.zeros_like(context), torch.zeros_like(pooled)
    else:
        uc_context, uc_pooled = _encode(sd, negative_prompts, **options)
    c, uc = {"context": context}, {"context": uc_context}
    if sd.family == "sdxl":
        sizes = (original_size or (height, width), crops_coords_top_left, target_size or (height, width))
        c["y"], uc["y"] = sd.sdxl_label(pooled, *sizes), sd.sdxl_label(uc_pooled, *sizes)
    return c, uc


# --------------------------------------------------------------------------------------------
# the one generation path
# --------------------------------------------------------------------------------------------


def _generator(seed: Seed, generator: torch.Generator | None) -> tuple[torch.Generator, int | None]:
    """A CPU generator by default: the same seed then gives the same x_T (and image) on CPU and CUDA."""
    if generator is not None:
        return generator, None  # the caller's generator: no seed we could honestly report
    used = seed.resolve()
    return torch.Generator(seed.noise_device).manual_seed(used), used


def _unet_model(sd, channels_last: bool):
    """``model(x, t, c)`` for ``guided_eps_model``: fp32 latents in, the UNet's dtype inside, fp32 out.

    ``c["c_concat"]`` (inpainting models) is stacked onto ``x`` along channels, CompVis's "hybrid"
    conditioning: ``cat([x, mask, masked_image_latents], dim=1)``.
    """

    def model(x: torch.Tensor, t: torch.Tensor, c: dict) -> torch.Tensor:
        if "c_concat" in c:
            x = torch.cat([x, c["c_concat"]], dim=1)
        x = x.to(sd.dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return sd.unet(x, t, c["context"], y=c.get("y")).float()

    return model


def generate(sd: DiffusionModel, request: Request, begin: Callable | None = None, *,
             generator: torch.Generator | None = None, callback=None) -> Generation:
    """Run one generation: check ``request`` against the model, fix the randomness, encode the prompts,
    let ``begin(sd, request, grid, generator) -> Start`` make the initial latents (default: x_T ~ N(0, I),
    text to image; it runs first, so its checks come before any network), run the sampler with classifier-free guidance, decode, and package the result.

    ``generator``: a ``torch.Generator`` to draw all noise from instead of the request's seed;
    ``callback(i, t, x, pred_x0)`` after every step.
    """
    if not isinstance(request, Request):
        raise SettingsError("request", f"request must be a Request (Request.build(...)), got {type(request).__name__}")
    if callback is not None and not callable(callback):
        raise SettingsError("callback", f"callback must be callable as callback(i, t, x, pred_x0), got {callback!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise SettingsError("generator", f"generator must be a torch.Generator, got {type(generator).__name__}")
    request = request.check_against(ModelGeometry.of_model(sd))
    grid = request.sampler.grid(sd.schedule)
    cond = request.conditioning
    prompts, negative_prompts, tag_loras = cond.loras()  # <lora:name:w> tags out of the text (a1111 syntax)
    with memory_context(sd, request.memory), temporary_loras(sd, tag_loras):
        generator, seed = _generator(request.seed, generator)
        start = (begin or begin_from_noise)(sd, request, grid, generator)
        c, uc = conditioning(sd, prompts, negative_prompts, request.size.height, request.size.width,
                             cond.original_size, tuple(cond.crops_coords_top_left), cond.target_size,
                             cond.prompt_syntax, cond.clip_skip)
        if start.c_concat is not None:
            c, uc = c | {"c_concat": start.c_concat}, uc | {"c_concat": start.c_concat}
        latents, trajectory = _denoise(sd, request, c, uc, start, generator, callback)
        return _finish(sd, request, latents, trajectory, seed, start.records_strength, prompts + negative_prompts)


def _denoise(sd, request: Request, c: dict, uc: dict, start: Start, generator, callback):
    """Run the sampler from ``start.x`` over ``start.grid``. Returns ``(x_0, trajectory or None)``.
    NaN/inf in the model's output or the latents stops the sampler at that step, reported with its
    likely cause (:func:`_non_finite_error`)."""
    options = request.output
    if start.grid.num_steps == 0:  # strength 0: nothing to denoise
        return start.x, (Trajectory(x=[start.x]) if options.return_trajectory else None)
    bar = _progress_bar(start.grid.num_steps) if options.progress else None

    def on_step(i, t, x_i, pred_x0):
        if callback is not None:
            callback(i, t, x_i, pred_x0)
        if bar is not None:
            bar.update()

    unet = _unet_model(sd, request.memory.uses_channels_last(sd.device))
    eps_model = guided_eps_model(unet, c, uc, request.conditioning.guidance_scale)
    try:
        with torch.no_grad():
            result = sample(eps_model, start.x, start.grid, settings=request.sampler,
                            prediction_type=sd.prediction_type, generator=generator, callback=on_step,
                            step_hook=start.step_hook, return_trajectory=bool(options.return_trajectory))
    except FloatingPointError as err:  # the sampler stops at the first step with NaN/inf, whatever the policy
        raise _non_finite_error(sd, "latents", f" ({err})") from None
    finally:
        if bar is not None:
            bar.close()
    return result if options.return_trajectory else (result, None)


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sampling", unit="step")


def _non_finite_weights(sd) -> list[str]:
    """Names of the model's weight tensors holding NaN/inf, read from its state dict (which holds every
    weight in its plain form, however a network keeps it for speed)."""
    return [name for name, w in sd.state_dict().items() if w.is_floating_point() and not torch.isfinite(w).all()]


def _non_finite_error(sd, what: str, where: str = "") -> Exception:
    """The error for NaN/inf in ``what``, naming the likely cause: damaged weights (the first tensor
    named), fp16/bf16 overflow, or settings too extreme even for float32."""
    bad = _non_finite_weights(sd)
    if bad:
        return CheckpointError(f"the {what} hold NaN/inf{where} because {len(bad)} of the model's weight tensors do "
                               f"(e.g. {bad[0]}); the checkpoint is damaged: download or convert it again.")
    dtype = str(sd.dtype).removeprefix("torch.")
    hint = ("fp16/bf16 overflowed: load the model in float32 (--precision fp32)" if sd.dtype != torch.float32
            else "the guidance scale or the given latents are too extreme for float32")
    return SettingsError("non_finite", f"the {what} hold NaN/inf{where} (model in {dtype}); likely {hint}; "
                         "pass non_finite='warn' (--allow-non-finite) to keep them anyway.")


def _refuse_non_finite(sd, tensor: torch.Tensor, what: str, policy: str) -> None:
    """Never a silent black picture: stop (or, with ``non_finite="warn"``, warn) when ``tensor`` holds NaN/inf."""
    if torch.isfinite(tensor).all():
        return
    error = _non_finite_error(sd, what)
    if policy == "error":
        raise error
    warnings.warn(f"{error} Returning them as asked (non_finite='warn').", NonFiniteOutputWarning, stacklevel=4)


def _finish(sd, request: Request, latents: torch.Tensor, trajectory, seed, records_strength: bool,
            encoded: list[str]) -> Generation:
    """Check, decode (unless ``output="latent"``) and package the result. ``encoded``: the texts given to the
    text encoder (for the embeddings named in ``TI hashes``)."""
    options = request.output
    _refuse_non_finite(sd, latents, "sampled latents", options.non_finite)
    images, arrays, pred_x0_images = [], None, None
    if options.output != "latent":
        decoded = decode(sd, latents, request.memory)
        _refuse_non_finite(sd, decoded, "decoded images", options.non_finite)
        arrays = tensor_to_array(decoded)
        images = array_to_pil(arrays) if options.output == "pil" else []
    if options.return_trajectory == "decoded":
        pred_x0_images = [array_to_pil(tensor_to_array(decode(sd, p, request.memory))) for p in trajectory.pred_x0]
    fields = infotext_fields(request, seed) | adapter_fields(applied_loras(sd), used_embeddings(sd, encoded))
    if not records_strength:
        fields["denoising_strength"] = None
    cond = request.conditioning
    return Generation(images, arrays, latents.float(), trajectory, pred_x0_images, seed, cond.prompts,
                      cond.negative_prompts, fields, request)


def _latent_shape(sd, request: Request) -> tuple[int, int, int, int]:
    return request.size.latent_shape(request.conditioning.batch, sd.config.unet.out_channels, vae_factor(sd))


def refuse_inpainting_model(sd, what: str) -> None:
    if is_inpainting_model(sd):
        raise SettingsError("model", f"this is an inpainting checkpoint (its UNet reads {sd.config.unet.in_channels} "
                            f"channels); {what} needs an ordinary one, or use inpaint() / the inpaint command with it.")


# --------------------------------------------------------------------------------------------
# the three doors: how each builds its request and its initial latents
# --------------------------------------------------------------------------------------------


def begin_from_noise(sd, request: Request, grid: SamplingGrid, generator) -> Start:
    """Text to image: x_T ~ N(0, I), drawn from ``generator`` on its own device, over the whole grid."""
    refuse_inpainting_model(sd, "txt2img")
    return Start(randn(_latent_shape(sd, request), generator, sd.device), grid)


def begin_from_latents(latents: torch.Tensor):
    """Text to image from a given x_T ``latents`` ``(B, 4, h, w)`` (diffusers' ``latents=``)."""

    def begin(sd, request: Request, grid: SamplingGrid, generator) -> Start:
        refuse_inpainting_model(sd, "txt2img")
        x_T = _check_latents(latents, _latent_shape(sd, request), request.size)
        return Start(x_T.to(sd.device, torch.float32), grid)

    return begin


def begin_from_image(image: torch.Tensor):
    """Image to image: the image's latents (``encode_image``, noise from the run's generator), noised to
    the level the strength asks for (DDPM Eq. 4), denoised over the last steps of the grid."""

    def begin(sd, request: Request, grid: SamplingGrid, generator) -> Start:
        refuse_inpainting_model(sd, "img2img")
        kept, noise_grid = strength_grids(request, grid)
        z0 = encode_image(sd, image, generator).expand(request.conditioning.batch, -1, -1, -1)
        return Start(noised(z0, noise_grid, randn(z0.shape, generator, sd.device)), kept)

    return begin


def begin_inpainting(image: torch.Tensor, mask: torch.Tensor):
    """Inpainting: pure noise at strength 1, else the noised image as img2img; a 9-channel model reads the
    mask and the masked image's latents at every step, a 4-channel one gets the known region back after
    every step (see :func:`inpaint`)."""

    def begin(sd, request: Request, grid: SamplingGrid, generator) -> Start:
        kept, noise_grid = strength_grids(request, grid)
        shape = _latent_shape(sd, request)
        latent_mask = F.interpolate(mask, size=shape[-2:]).to(sd.device)  # nearest
        from_noise = request.strength.strength == 1
        z0 = None if from_noise and is_inpainting_model(sd) else encode_image(sd, image, generator).expand(shape)
        noise = randn(shape, generator, sd.device)
        x = noise if from_noise else noised(z0, noise_grid, noise)
        if is_inpainting_model(sd):
            masked_image_latents = encode_image(sd, image * (mask < 0.5), generator)
            c_concat = torch.cat([latent_mask, masked_image_latents], dim=1).expand(shape[0], -1, -1, -1)
            return Start(x, kept, c_concat=c_concat, records_strength=not from_noise)
        return Start(x, kept, step_hook=blend_known_region(z0, latent_mask, noise, kept),
                     records_strength=not from_noise)

    return begin


def _check_latents(latents, shape: tuple, size: ImageSize) -> torch.Tensor:
    if not isinstance(latents, torch.Tensor):
        raise SettingsError("latents", f"latents must be a torch.Tensor of shape {shape}, got {type(latents).__name__}")
    if tuple(latents.shape) != shape:
        raise SettingsError("latents", f"latents must have shape {shape} for {shape[0]} images of "
                            f"{size.height}x{size.width}, got {tuple(latents.shape)}")
    if not latents.is_floating_point() or not torch.isfinite(latents).all():
        raise SettingsError("latents", "latents must be finite floating-point numbers (x_T ~ N(0, I)); "
                            "they hold NaN/inf or are not floats")
    return latents


def txt2img(sd: DiffusionModel, prompt, *, height: int | None = None, width: int | None = None,
            latents: torch.Tensor | None = None, generator: torch.Generator | None = None, callback=None,
            **settings) -> Generation:
    """Text to image: CompVis ``scripts/txt2img.py``; diffusers ``StableDiffusion(XL)Pipeline.__call__``.

    * ``prompt``: a string or a list (each gives ``num_images`` images).
    * ``height``/``width``: default the model's own size (:func:`default_size`), multiples of the VAE's
      factor (:func:`vae_factor`, 8 for every SD release).
    * ``latents``: x_T itself ``(B, 4, h, w)`` (what diffusers' ``latents=`` is), e.g. to compare.
    * ``generator``: a ``torch.Generator`` for all noise instead of ``seed``; ``callback(i, t, x, pred_x0)``
      after every step.
    * ``settings``: every other keyword of :meth:`diffusion_notes.settings.Request.build`, with its default:

      ==============================================  ============================================================
      ``negative_prompt`` ('')                        replaces the '' of the unconditional branch (``uc``)
      ``guidance_scale`` (7.5), ``num_images`` (1)    ``unconditional_guidance_scale``; images per prompt
      ``sampler`` ("plms"), ``steps`` (50)            a key of :data:`diffusion_notes.samplers.SAMPLERS`
      ``sigma_schedule`` ("default")                  or ``"karras"``, ``"exponential"``
      ``spacing``, ``steps_offset`` (None)            the sampler's defaults (CompVis ``"uniform"`` for DDIM/PLMS)
      ``eta`` (None), ``sampler_options`` (None)      the sampler's options (:class:`~diffusion_notes.sampling.SamplerSettings`)
      ``seed`` (None: random), ``noise_device``       0 to 2**32 - 1; a CPU generator by default (same image on CPU and CUDA)
      ``output`` ("pil"), ``return_trajectory``       :class:`~diffusion_notes.settings.OutputOptions`, with ``progress``
      ``non_finite`` ("error")                        or ``"warn"``: NaN/inf latents or images
      ``memory`` (None)                               :class:`~diffusion_notes.settings.MemoryOptions`
      ``original_size``, ``crops_coords_top_left``,   SDXL's size conditioning (:class:`~diffusion_notes.settings.Conditioning`)
      ``target_size``
      ``prompt_syntax`` ("plain"), ``clip_skip`` (1)  ``"a1111"``: ``(word:1.2)``, long prompts, ``<lora:name:w>`` tags
      ``lora_dir`` (None)                             the folder those tags' files are in (``adapters.prompt_tags``)
      ==============================================  ============================================================
    """
    request = Request.build(prompt, height=height, width=width, **settings)
    begin = begin_from_noise if latents is None else begin_from_latents(latents)
    return generate(sd, request, begin, generator=generator, callback=callback)


def img2img(sd: DiffusionModel, image, prompt, *, strength: float = IMG2IMG_STRENGTH.strength,
            strength_rule: str = IMG2IMG_STRENGTH.rule, sampler: str = IMAGE_SAMPLER,
            generator: torch.Generator | None = None, callback=None, **settings) -> Generation:
    """Image to image (SDEdit, Meng et al. 2022): encode, noise to an intermediate timestep, denoise from there.

    ``image``: a PIL image, a path, or a ``(1, 3, H, W)`` / ``(3, H, W)`` tensor in [-1, 1]
    (:func:`diffusion_notes.images.image_to_tensor`); its size is the output's. ``strength`` and
    ``strength_rule``: :func:`strength_timesteps`. The sampler defaults to DDIM, as CompVis's
    ``scripts/img2img.py``. The other keywords: those of :func:`txt2img`.
    CompVis ``scripts/img2img.py``; diffusers ``StableDiffusionImg2ImgPipeline``.
    """
    image = image_to_tensor(image, "image")
    request = Request.build(prompt, size=_image_size(image), strength=strength, strength_rule=strength_rule,
                            sampler=sampler, **settings)
    return generate(sd, request, begin_from_image(image), generator=generator, callback=callback)


def inpaint(sd: DiffusionModel, image, mask, prompt, *, strength: float = INPAINT_STRENGTH.strength,
            strength_rule: str = INPAINT_STRENGTH.rule, sampler: str = IMAGE_SAMPLER,
            generator: torch.Generator | None = None, callback=None, **settings) -> Generation:
    """Repaint where ``mask`` is white (1), keep the rest.

    * 9-channel inpainting checkpoints (``sd-v1-5-inpainting``, ``512-inpainting-ema``): the UNet
      reads ``cat([x, mask, masked_image_latents])`` at every step (CompVis hybrid ``c_concat``,
      diffusers ``StableDiffusionInpaintPipeline``); the masked image is ``image * (mask < 0.5)``.
    * ordinary 4-channel checkpoints: known-region replacement (Song et al. 2021, score SDE App. I.2;
      CompVis ``p_sample_ddim(mask=)``; diffusers' legacy path; not RePaint, whose contribution is
      resampling): after each step the kept region is replaced by the image noised to the next timestep,
      ``x = mask * x + (1 - mask) * q_sample(z_0, t_next, noise)``, and by ``z_0`` itself after the last
      (:func:`diffusion_notes.init_image.blend_known_region`).

    ``image`` as in :func:`img2img`; ``mask``: a PIL image, a path, or a tensor in [0, 1] of shape
    ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)`` (:func:`diffusion_notes.images.mask_to_tensor`).
    ``strength = 1`` (default) starts from pure noise, as these models were trained; lower values start
    from the noised image (:func:`strength_timesteps`). The other keywords: those of :func:`txt2img`.
    """
    image, mask = image_to_tensor(image, "image"), mask_to_tensor(mask)
    check_image_and_mask(image, mask)
    request = Request.build(prompt, size=_image_size(image), strength=strength, strength_rule=strength_rule,
                            sampler=sampler, **settings)

    return generate(sd, request, begin_inpainting(image, mask), generator=generator, callback=callback)


def _show_request_keywords(door, left_out: tuple[str, ...]) -> None:
    """Give ``door`` (whose ``**settings`` go to ``Request.build``) the signature ``help()`` and
    ``inspect.signature`` show: its own parameters, then every keyword of ``Request.build`` it does not
    set itself (``left_out``: those that do not apply to it). Derived, so the two cannot drift apart."""
    own = [p for p in inspect.signature(door).parameters.values() if p.kind is not p.VAR_KEYWORD]
    names = {p.name for p in own}
    extra = [p for p in inspect.signature(Request.build).parameters.values()
             if p.kind is p.KEYWORD_ONLY and p.name not in names and p.name not in left_out]
    door.__signature__ = inspect.signature(door).replace(parameters=own + extra)


_show_request_keywords(txt2img, ("size", "strength", "strength_rule"))
_show_request_keywords(img2img, ("size", "height", "width"))
_show_request_keywords(inpaint, ("size", "height", "width"))


def _image_size(image: torch.Tensor) -> ImageSize:
    return ImageSize(int(image.shape[-2]), int(image.shape[-1]), from_image="image")

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

Settings: every keyword argument becomes a frozen settings object of :mod:`diffusion_notes.settings`
(or :class:`diffusion_notes.sampling.SamplerSettings`), validated once before the first network runs;
nothing here changes the model it is given (memory options apply inside a context and are undone).

Precision: the latents stay float32 between steps and the schedule float64; each UNet call casts its
input to the model's dtype (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32 by default; see
:func:`diffusion_notes.precision.default_dtype`) and its output back.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CheckpointError, SettingsError
from .guidance import guided_eps_model
from .images import (
    array_to_pil,
    check_image_and_mask,
    format_parameters,
    image_to_tensor,
    mask_to_tensor,
    tensor_to_array,
)
from .models.prepacked import PrepackedConv2d
from .noise import randn
from .precision import default_dtype
from .prompts import warn_if_truncated
from .sampling import SamplerSettings, Trajectory, sample
from .samplers import SamplingGrid
from .settings import (
    IMAGE_SAMPLER,
    IMG2IMG_STRENGTH,
    INPAINT_STRENGTH,
    STRENGTH_RULES,
    Conditioning,
    ImageSize,
    MemoryOptions,
    OutputOptions,
    Seed,
    Strength,
    check_fits_in_memory,
    infotext_fields,
)

__all__ = ["txt2img", "img2img", "inpaint", "Generation", "Request", "DiffusionModel", "sampler_settings", "MemoryOptions", "NonFiniteDecodeWarning",
           "NonFiniteOutputWarning", "NoDenoisingWarning", "decode", "decode_checked", "decode_tiled",
           "encode_image", "conditioning", "strength_timesteps", "default_size", "default_dtype", "vae_factor",
           "size_multiple", "check_size", "is_inpainting_model", "STRENGTH_RULES"]

class DiffusionModel(Protocol):
    """What the pipeline reads from its model (:class:`diffusion_notes.stable_diffusion.StableDiffusion`
    is the one implementation): the three networks, the noise schedule and a few views of the config.

    * ``unet(x, t, context, y=None)`` -> eps or v (``prediction_type``), shaped like ``x``;
    * ``vae.encode(x)`` -> a diagonal Gaussian with ``.sample(generator)``; ``vae.decode(z)`` (unscaled ``z``);
    * ``prompt_encoder`` (moved for text-encoder offloading), ``encode_prompt(prompts) -> (context, pooled)``,
      ``sdxl_label(pooled, original_size, crop, target_size)``, ``tokenizer`` (prompt-length warnings);
    * ``schedule`` (:class:`~diffusion_notes.schedules.NoiseSchedule`), ``config`` (``.unet``, ``.vae``),
      ``family``, ``prediction_type``, ``scale_factor``, ``device``, ``dtype``, ``named_parameters()``.
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

    def named_parameters(self): ...


class NonFiniteDecodeWarning(UserWarning):
    """The VAE produced inf/NaN in fp16/bf16 and the decode was repeated in float32."""


class NonFiniteOutputWarning(UserWarning):
    """``non_finite="warn"``: the latents or images hold NaN/inf and are returned anyway."""


class NoDenoisingWarning(UserWarning):
    """The strength leaves no denoising step: the image comes back only encoded and decoded."""


# --------------------------------------------------------------------------------------------
# what one call asks for, and what it returns
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """Every setting of one generation, each part validated once by :meth:`validate`."""

    conditioning: Conditioning
    size: ImageSize
    sampler: SamplerSettings
    seed: Seed
    output: OutputOptions
    memory: MemoryOptions
    strength: Strength | None = None

    def validate(self, sd) -> SamplingGrid:
        """Check everything against ``sd`` before any network runs; returns the sampler's grid."""
        self.conditioning.validate()
        self.sampler.validate(sd.schedule.num_timesteps)
        self.seed.validate()
        self.output.validate()
        self.memory.validate()
        if self.strength is not None:
            self.strength.validate()
        self.size.validate(vae_factor(sd))
        check_fits_in_memory(self.size, self.conditioning.batch, vae_factor(sd), sd.device,
                             sd.config.vae.ch, self.memory)
        return self.sampler.grid(sd.schedule)


@dataclass
class Generation:
    """What a pipeline call returns.

    ``images``: PIL images (empty for ``output="latent"`` / ``"array"``); ``arrays``: ``(B, H, W, 3)``
    float32 in [0, 1] (diffusers ``output_type="np"``; None for ``output="latent"``); ``latents``: the
    final :math:`z_0` ``(B, 4, h, w)`` in float32, before the VAE; ``trajectory``: the latent ``x`` and
    ``pred_x0`` after every step (``return_trajectory``); ``pred_x0_images``: per step, the decoded
    ``pred_x0`` of every sample (``return_trajectory="decoded"``); ``seed``: the seed of the noise
    (drawn at random for ``seed=None`` or -1; None when a ``generator`` was passed); ``request``: the
    validated settings; ``prompts`` / ``settings``: what :meth:`infotext` writes (derived from ``request``).
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
        return format_parameters(self.prompts[index], self.negative_prompts[index], **self.settings, **position,
                                 **extra)


# --------------------------------------------------------------------------------------------
# the model's geometry
# --------------------------------------------------------------------------------------------


def default_size(sd) -> tuple[int, int]:
    """(height, width) the model was trained at: its own record (``config.native_size``, e.g. 32x32 for the
    shipped miniature) when it has one, else its family's release: SD 1.x and 2.x-base 512, SD 2.x-768 (v)
    768, SDXL 1024."""
    native = getattr(sd.config, "native_size", None)
    if native:
        return tuple(native)
    if sd.family == "sdxl":
        return 1024, 1024
    if sd.family == "sd2" and sd.prediction_type == "v":
        return 768, 768
    return 512, 512


def vae_factor(sd) -> int:
    """Pixels per latent pixel: 2 per autoencoder level below the top (8 for every released SD)."""
    return 2 ** (len(sd.config.vae.ch_mult) - 1)


def size_multiple(sd) -> int:
    """Image sides must be multiples of this: the VAE's downsampling factor (8 for every SD release).
    The UNet resizes each upsampling to its skip connection's size, as diffusers does, so odd
    latent sides are fine (CompVis's UNet always doubles and would need multiples of 64)."""
    return vae_factor(sd)


def check_size(sd, height: int, width: int) -> None:
    """SettingsError unless ``height`` and ``width`` are positive multiples of :func:`size_multiple`
    (:meth:`diffusion_notes.settings.ImageSize.validate`, the one size rule)."""
    ImageSize(height, width).validate(size_multiple(sd))


def is_inpainting_model(sd) -> bool:
    """Inpainting checkpoints read 9 channels: 4 latents, 1 mask, 4 masked-image latents."""
    return sd.config.unet.in_channels == sd.config.unet.out_channels + 5


def _refuse_inpainting_model(sd, what: str) -> None:
    if is_inpainting_model(sd):
        raise SettingsError("model", f"this is an inpainting checkpoint (its UNet reads {sd.config.unet.in_channels} "
                            f"channels); {what} needs an ordinary one, or use inpaint() / the inpaint command with it.")


# --------------------------------------------------------------------------------------------
# conditioning: prompts -> c, uc
# --------------------------------------------------------------------------------------------


def _encode(sd, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CLIP features on the UNet's device, in its dtype (the encoders may sit elsewhere: offloading)."""
    context, pooled = sd.encode_prompt(prompts)
    return context.to(sd.device), (pooled.to(sd.device) if pooled is not None else None)


def conditioning(sd, prompts: list[str], negative_prompts: list[str], height: int, width: int,
                 original_size=None, crops_coords_top_left=(0, 0), target_size=None):
    """``(c, uc)``: dicts of UNet keyword arguments for the prompts and the negative prompts.

    ``context`` (B, 77, 768) for SD 1.x; SDXL adds ``y`` = pooled text + the size/crop embedding of
    ``(original_size, crops_coords_top_left, target_size)`` (default: the image's size, no crop), the
    same for ``c`` and ``uc`` as in diffusers. SDXL's empty negative prompt is all zeros, not the
    features of '' (sgm ``force_uc_zero_embeddings=["txt"]``, diffusers ``force_zeros_for_empty_prompt``).
    """
    warn_if_truncated(sd.tokenizer, prompts)
    warn_if_truncated(sd.tokenizer, negative_prompts, what="negative prompt")
    context, pooled = _encode(sd, prompts)
    if sd.family == "sdxl" and not any(negative_prompts):
        uc_context, uc_pooled = torch.zeros_like(context), torch.zeros_like(pooled)
    else:
        uc_context, uc_pooled = _encode(sd, negative_prompts)
    c, uc = {"context": context}, {"context": uc_context}
    if sd.family == "sdxl":
        sizes = (original_size or (height, width), crops_coords_top_left, target_size or (height, width))
        c["y"], uc["y"] = sd.sdxl_label(pooled, *sizes), sd.sdxl_label(uc_pooled, *sizes)
    return c, uc


def _conditioning(sd, request: Request) -> tuple[dict, dict]:
    cond = request.conditioning
    return conditioning(sd, cond.prompts, cond.negative_prompts, request.size.height, request.size.width,
                        cond.original_size, tuple(cond.crops_coords_top_left), cond.target_size)


# --------------------------------------------------------------------------------------------
# memory options: applied inside a context, undone on exit
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _attention_upcast(sd, enabled: bool):
    """Temporarily compute every attention softmax of the UNet in float32."""
    layers = [m for m in sd.unet.modules() if hasattr(m, "upcast_attention")] if enabled else []
    before = [m.upcast_attention for m in layers]
    for m in layers:
        m.upcast_attention = True
    try:
        yield
    finally:
        for m, value in zip(layers, before):
            m.upcast_attention = value


def _is_channels_last(module: torch.nn.Module) -> bool:
    weights = [p for p in module.parameters() if p.ndim == 4]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


@contextlib.contextmanager
def _channels_last(modules: list, enabled: bool):
    """Temporarily store the convolution weights of ``modules`` in NHWC order (faster on CUDA)."""
    changed = [m for m in modules if enabled and not _is_channels_last(m)]
    for m in changed:
        m.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for m in changed:
            m.to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def _text_encoder_offload(sd, enabled: bool):
    """Temporarily run the text encoder(s) on the CPU in float32 (CPUs are slow at fp16, and the text
    encoder runs once per prompt, not once per step); put back on their device and dtype afterwards."""
    if not enabled:
        yield
        return
    first = next(sd.prompt_encoder.parameters())
    device, dtype = first.device, first.dtype
    sd.prompt_encoder.to("cpu", torch.float32)
    try:
        yield
    finally:
        sd.prompt_encoder.to(device, dtype)


@contextlib.contextmanager
def _memory_context(sd, memory: MemoryOptions):
    with contextlib.ExitStack() as stack:
        stack.enter_context(_attention_upcast(sd, memory.upcast_attention))
        stack.enter_context(_channels_last([sd.unet], memory.uses_channels_last(sd.device)))
        stack.enter_context(_text_encoder_offload(sd, memory.offload_text_encoder))
        yield


# --------------------------------------------------------------------------------------------
# noise, the model function, the sampling run
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


@dataclass(frozen=True)
class _Run:
    """What the sampling run reads: the model, the validated request, conditioning, randomness."""

    sd: object
    request: Request
    c: dict
    uc: dict
    generator: torch.Generator
    seed: int | None
    callback: object


def _denoise(run: _Run, x: torch.Tensor, grid: SamplingGrid, step_hook=None):
    """Run the sampler from ``x`` over ``grid``; ``step_hook(i, t, x, pred_x0)`` returns the latents the
    next step starts from (inpainting blends the known region there; :func:`diffusion_notes.sampling.sample`).

    Returns ``(x_0, trajectory or None)``. NaN/inf in the model's output or the latents stops the
    sampler at that step: reported with its likely cause (:func:`_refuse_non_finite`)."""
    options = run.request.output
    if grid.num_steps == 0:  # strength 0: nothing to denoise
        return x, (Trajectory(x=[x]) if options.return_trajectory else None)
    bar = _progress_bar(grid.num_steps) if options.progress else None

    def callback(i, t, x_i, pred_x0):
        if run.callback is not None:
            run.callback(i, t, x_i, pred_x0)
        if bar is not None:
            bar.update()

    sd = run.sd
    channels_last = run.request.memory.uses_channels_last(sd.device)
    eps_model = guided_eps_model(_unet_model(sd, channels_last), run.c, run.uc, run.request.conditioning.guidance_scale)
    try:
        with torch.no_grad():
            result = sample(eps_model, x, sd.schedule, settings=run.request.sampler, grid=grid,
                            prediction_type=sd.prediction_type, generator=run.generator, callback=callback,
                            step_hook=step_hook, return_trajectory=bool(options.return_trajectory))
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
    """Names of the weight tensors holding NaN/inf: the parameters, then the prepacked convolution
    weights (``models.prepacked``; not parameters), read back one at a time."""
    bad = [name for name, p in sd.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()]
    return bad + [f"{name}.weight" for name, module in sd.named_modules()
                  if isinstance(module, PrepackedConv2d) and not torch.isfinite(module.weight).all()]


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
    warnings.warn(f"{error} Returning them as asked (non_finite='warn').", NonFiniteOutputWarning, stacklevel=3)


def _finish(run: _Run, latents: torch.Tensor, trajectory) -> Generation:
    """Check, decode (unless ``output="latent"``) and package the result."""
    sd, request = run.sd, run.request
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
    cond = request.conditioning
    settings = infotext_fields(request.sampler, cond, request.size, run.seed, request.strength)
    return Generation(images, arrays, latents.float(), trajectory, pred_x0_images, run.seed, cond.prompts,
                      cond.negative_prompts, settings, request)


def _validate(sd, request: Request, generator, callback) -> SamplingGrid:
    """Every check, before any network runs; returns the sampler's grid."""
    grid = request.validate(sd)
    if callback is not None and not callable(callback):
        raise SettingsError("callback", f"callback must be callable as callback(i, t, x, pred_x0), got {callback!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise SettingsError("generator", f"generator must be a torch.Generator, got {type(generator).__name__}")
    return grid


def _start(sd, request: Request, generator, callback) -> _Run:
    """Fix the randomness and encode the prompts (the first network call)."""
    generator, seed = _generator(request.seed, generator)
    c, uc = _conditioning(sd, request)
    return _Run(sd, request, c, uc, generator, seed, callback)


def sampler_settings(sampler: str = SamplerSettings.sampler, steps: int = SamplerSettings.steps,
                     sigma_schedule: str = SamplerSettings.sigma_schedule,
                     spacing: str | None = None, steps_offset: int | None = None, eta: float | None = None,
                     sampler_options: dict | None = None) -> SamplerSettings:
    """The pipeline's sampler keywords as one :class:`~diffusion_notes.sampling.SamplerSettings`
    (``eta`` is one of the sampler's options; None: the sampler's default)."""
    if sampler_options is not None and not isinstance(sampler_options, dict):
        raise SettingsError("sampler_options", f"sampler_options must be a dict of the sampler's options, got "
                            f"{type(sampler_options).__name__}")
    options = {**({"eta": eta} if eta is not None else {}), **(sampler_options or {})}
    return SamplerSettings(sampler, steps, sigma_schedule, spacing, steps_offset, options)


def _memory(memory) -> MemoryOptions:
    if memory is not None and not isinstance(memory, MemoryOptions):
        raise SettingsError("memory", f"memory must be a MemoryOptions, got {type(memory).__name__}")
    return memory or MemoryOptions()


# --------------------------------------------------------------------------------------------
# text to image
# --------------------------------------------------------------------------------------------


def txt2img(sd: DiffusionModel, prompt, *, negative_prompt=Conditioning.negative_prompt,
            sampler: str = SamplerSettings.sampler, steps: int = SamplerSettings.steps,
            sigma_schedule: str = SamplerSettings.sigma_schedule, spacing: str | None = None, steps_offset: int | None = None,
            eta: float | None = None, sampler_options: dict | None = None, guidance_scale: float = Conditioning.guidance_scale,
            height: int | None = None, width: int | None = None, num_images: int = Conditioning.num_images, seed: int | None = None,
            generator: torch.Generator | None = None, noise_device=Seed.noise_device, latents: torch.Tensor | None = None,
            callback=None, output: str = OutputOptions.output, return_trajectory: bool | str = False, progress: bool = False,
            non_finite: str = OutputOptions.non_finite, memory: MemoryOptions | None = None, original_size=None,
            crops_coords_top_left=Conditioning.crops_coords_top_left, target_size=None) -> Generation:
    """Text to image: CompVis ``scripts/txt2img.py``; diffusers ``StableDiffusion(XL)Pipeline.__call__``.

    * ``prompt``: a string or a list (each gives ``num_images`` images); ``negative_prompt`` replaces
      the '' of the unconditional branch (``uc``); ``guidance_scale`` is ``unconditional_guidance_scale``
      (:class:`~diffusion_notes.settings.Conditioning`, also SDXL's ``original_size``,
      ``crops_coords_top_left``, ``target_size``).
    * ``sampler`` (a key of :data:`diffusion_notes.samplers.SAMPLERS`), ``steps``, ``sigma_schedule``
      (``"default"``, ``"karras"``, ``"exponential"``), ``spacing`` and ``steps_offset`` (None: the sampler's
      defaults, CompVis ``"uniform"`` for DDIM/PLMS; ``"leading"`` is diffusers'), ``eta`` (samplers that
      take it) and ``sampler_options`` (the sampler's other options, e.g. ``set_alpha_to_one``):
      :class:`diffusion_notes.sampling.SamplerSettings`, which holds their defaults and checks.
    * ``height``/``width``: default per family (:func:`default_size`), multiples of :func:`size_multiple`.
    * ``seed``/``generator``: the source of x_T and of any sampler noise. By default a CPU
      ``torch.Generator`` seeded with ``seed`` (0 to 2**32 - 1; None or -1: random, reported in ``.seed``),
      so one seed gives the same image on CPU and CUDA; ``noise_device="cuda"`` draws on the GPU instead.
    * ``latents``: x_T itself ``(B, 4, h, w)`` (what diffusers' ``latents=`` is), e.g. to compare.
    * ``callback(i, t, x, pred_x0)`` after every step; ``output``, ``return_trajectory``, ``progress``,
      ``non_finite``: :class:`~diffusion_notes.settings.OutputOptions`; ``memory``: :class:`MemoryOptions`.
    """
    _refuse_inpainting_model(sd, "txt2img")
    default_h, default_w = default_size(sd)
    size = ImageSize(default_h if height is None else height, default_w if width is None else width)
    request = Request(
        Conditioning(prompt, negative_prompt, num_images, guidance_scale, original_size, crops_coords_top_left,
                     target_size),
        size,
        sampler_settings(sampler, steps, sigma_schedule, spacing, steps_offset, eta, sampler_options),
        Seed(seed, noise_device),
        OutputOptions(output, return_trajectory, progress, non_finite),
        _memory(memory))
    grid = _validate(sd, request, generator, callback)
    shape = size.latent_shape(request.conditioning.batch, sd.config.unet.out_channels, vae_factor(sd))
    if latents is not None:
        _check_latents(latents, shape, size)
    with _memory_context(sd, request.memory):
        run = _start(sd, request, generator, callback)
        x_T = randn(shape, run.generator, sd.device) if latents is None else latents.to(sd.device, torch.float32)
        return _finish(run, *_denoise(run, x_T, grid))


def _check_latents(latents, shape: tuple, size: ImageSize) -> None:
    if not isinstance(latents, torch.Tensor):
        raise SettingsError("latents", f"latents must be a torch.Tensor of shape {shape}, got {type(latents).__name__}")
    if tuple(latents.shape) != shape:
        raise SettingsError("latents", f"latents must have shape {shape} for {shape[0]} images of "
                            f"{size.height}x{size.width}, got {tuple(latents.shape)}")
    if not latents.is_floating_point() or not torch.isfinite(latents).all():
        raise SettingsError("latents", "latents must be finite floating-point numbers (x_T ~ N(0, I)); "
                            "they hold NaN/inf or are not floats")


# --------------------------------------------------------------------------------------------
# image to image
# --------------------------------------------------------------------------------------------


def strength_timesteps(timesteps: np.ndarray, steps: int, strength: float, rule: str = "compvis"):
    r"""``(kept, t_noise)``: the timesteps img2img denoises over (ascending), and the one the image is noised to.

    ``strength`` in [0, 1] says how much of the way from the image to pure noise to go. The two codebases
    turn it into steps differently:

    * ``"compvis"`` (``scripts/img2img.py``, DDIM only there): ``t_enc = int(strength * ddim_steps)``;
      ``stochastic_encode`` noises to ``ddim_timesteps[t_enc]`` and ``decode`` then runs the ``t_enc``
      steps ``ddim_timesteps[:t_enc]``. The image is noised one visited timestep *above* the first step
      taken, and ``strength = 1`` asks for ``ddim_timesteps[ddim_steps]``, which does not exist
      (CompVis fails with an IndexError; here a ValueError).
    * ``"diffusers"`` (``StableDiffusionImg2ImgPipeline.get_timesteps``): ``init_timestep =
      min(int(steps * strength), steps)``, ``t_start = steps - init_timestep``; it runs the last
      ``init_timestep`` timesteps and noises to the first of them.
    """
    Strength(strength, rule).validate()
    if rule == "compvis":
        t_enc = int(strength * steps)
        if t_enc == 0:  # no step to take: keep the image un-noised, as "strength 0" promises
            return timesteps[:0], None
        if t_enc >= len(timesteps):
            raise SettingsError("strength_rule", f"strength {strength} with the compvis rule noises to timestep index "
                                f"{t_enc}, past the last of the {len(timesteps)} timesteps (CompVis fails here too); "
                                "use a strength below 1 or strength_rule='diffusers'.")
        return timesteps[:t_enc], int(timesteps[t_enc])
    if rule == "diffusers":
        init_timestep = min(int(steps * strength), steps)
        kept = timesteps[:init_timestep]
        return kept, (int(kept[-1]) if len(kept) else None)
    raise AssertionError(rule)  # Strength.validate() refused it


def _image_size(image: torch.Tensor) -> ImageSize:
    return ImageSize(int(image.shape[-2]), int(image.shape[-1]))


def _strength_grids(request: Request, grid: SamplingGrid) -> tuple[SamplingGrid, SamplingGrid | None]:
    """The grid img2img denoises over (the last steps of the run) and the grid whose first level the
    image is noised to (the same for the diffusers rule, one level higher for CompVis's; None: no noise)."""
    strength = request.strength
    timesteps = grid.timesteps[:-1].flip(0).numpy()  # the visited timesteps, ascending
    kept, t_noise = strength_timesteps(timesteps, request.sampler.steps, strength.strength, strength.rule)
    n = len(kept)
    if n == 0:
        warnings.warn(f"strength {strength.strength} with the {strength.rule} rule and {request.sampler.steps} steps "
                      "leaves no denoising step: the image is returned only encoded and decoded; raise the strength "
                      "or the steps to change it", NoDenoisingWarning, stacklevel=3)
    if t_noise is None:
        return grid.last(n), None
    return grid.last(n), grid.last(n if strength.rule == "diffusers" else n + 1)


def _noised(z0: torch.Tensor, noise_grid: SamplingGrid | None, noise: torch.Tensor) -> torch.Tensor:
    """``z0`` noised to the first level of ``noise_grid`` (DDPM Eq. 4); ``z0`` itself when there is no step to take."""
    if noise_grid is None:
        return z0
    return noise_grid.q_sample(z0, noise)


def encode_image(sd, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    r"""Image in [-1, 1] -> ``scale_factor * z`` with :math:`z \sim q(z|x)`, the noise drawn from ``generator``
    on its own device (CompVis ``get_first_stage_encoding(encode_first_stage(x))``; diffusers
    ``latent_dist.sample(generator) * scaling_factor``)."""
    state = generator.get_state()

    def encode(vae_dtype):
        generator.set_state(state)  # a float32 retry draws the very same noise
        with torch.no_grad():
            posterior = sd.vae.encode(image.to(sd.device, vae_dtype))
            return sd.scale_factor * posterior.sample(generator).float()

    return _with_float32_retry(sd, encode, "encode")


def img2img(sd: DiffusionModel, image, prompt, *, strength: float = IMG2IMG_STRENGTH.strength,
            strength_rule: str = IMG2IMG_STRENGTH.rule,
            negative_prompt=Conditioning.negative_prompt, sampler: str = IMAGE_SAMPLER,
            steps: int = SamplerSettings.steps, sigma_schedule: str = SamplerSettings.sigma_schedule,
            spacing: str | None = None, steps_offset: int | None = None, eta: float | None = None,
            sampler_options: dict | None = None, guidance_scale: float = Conditioning.guidance_scale, num_images: int = Conditioning.num_images,
            seed: int | None = None, generator: torch.Generator | None = None, noise_device=Seed.noise_device, callback=None,
            output: str = OutputOptions.output, return_trajectory: bool | str = False, progress: bool = False,
            non_finite: str = OutputOptions.non_finite, memory: MemoryOptions | None = None, original_size=None,
            crops_coords_top_left=Conditioning.crops_coords_top_left, target_size=None) -> Generation:
    """Image to image (SDEdit, Meng et al. 2022): encode, noise to an intermediate timestep, denoise from there.

    ``image``: a PIL image, a path, or a ``(1, 3, H, W)`` / ``(3, H, W)`` tensor in [-1, 1]
    (:func:`diffusion_notes.images.image_to_tensor`); its size is the output's. ``strength`` and
    ``strength_rule``: :func:`strength_timesteps`. The other keywords: those of :func:`txt2img`.
    CompVis ``scripts/img2img.py``; diffusers ``StableDiffusionImg2ImgPipeline``.
    """
    _refuse_inpainting_model(sd, "img2img")
    image = image_to_tensor(image, "image")
    size = _image_size(image)
    size.validate_image(vae_factor(sd))
    request = Request(
        Conditioning(prompt, negative_prompt, num_images, guidance_scale, original_size, crops_coords_top_left,
                     target_size),
        size,
        sampler_settings(sampler, steps, sigma_schedule, spacing, steps_offset, eta, sampler_options),
        Seed(seed, noise_device),
        OutputOptions(output, return_trajectory, progress, non_finite),
        _memory(memory),
        Strength(strength, strength_rule))
    grid, noise_grid = _strength_grids(request, _validate(sd, request, generator, callback))
    with _memory_context(sd, request.memory):
        run = _start(sd, request, generator, callback)
        z0 = encode_image(sd, image, run.generator).expand(request.conditioning.batch, -1, -1, -1)
        x = _noised(z0, noise_grid, randn(z0.shape, run.generator, sd.device))
        return _finish(run, *_denoise(run, x, grid))


# --------------------------------------------------------------------------------------------
# inpainting
# --------------------------------------------------------------------------------------------


def inpaint(sd: DiffusionModel, image, mask, prompt, *, strength: float = INPAINT_STRENGTH.strength,
            strength_rule: str = INPAINT_STRENGTH.rule,
            negative_prompt=Conditioning.negative_prompt, sampler: str = IMAGE_SAMPLER,
            steps: int = SamplerSettings.steps, sigma_schedule: str = SamplerSettings.sigma_schedule,
            spacing: str | None = None, steps_offset: int | None = None, eta: float | None = None,
            sampler_options: dict | None = None, guidance_scale: float = Conditioning.guidance_scale, num_images: int = Conditioning.num_images,
            seed: int | None = None, generator: torch.Generator | None = None, noise_device=Seed.noise_device, callback=None,
            output: str = OutputOptions.output, return_trajectory: bool | str = False, progress: bool = False,
            non_finite: str = OutputOptions.non_finite, memory: MemoryOptions | None = None, original_size=None,
            crops_coords_top_left=Conditioning.crops_coords_top_left, target_size=None) -> Generation:
    """Repaint where ``mask`` is white (1), keep the rest.

    * 9-channel inpainting checkpoints (``sd-v1-5-inpainting``, ``512-inpainting-ema``): the UNet
      reads ``cat([x, mask, masked_image_latents])`` at every step (CompVis hybrid ``c_concat``,
      diffusers ``StableDiffusionInpaintPipeline``); the masked image is ``image * (mask < 0.5)``.
    * ordinary 4-channel checkpoints: known-region replacement (Song et al. 2021, score SDE App. I.2;
      CompVis ``p_sample_ddim(mask=)``; diffusers' legacy path; not RePaint, whose contribution is
      resampling): after each step the kept region is replaced by the image noised to the next timestep,
      ``x = mask * x + (1 - mask) * q_sample(z_0, t_next, noise)``, and by ``z_0`` itself after the last.

    ``image`` as in :func:`img2img`; ``mask``: a PIL image, a path, or a tensor in [0, 1] of shape
    ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)`` (:func:`diffusion_notes.images.mask_to_tensor`).
    ``strength = 1`` (default) starts from pure noise, as these models were trained; lower values start
    from the noised image (:func:`strength_timesteps`). The other keywords: those of :func:`txt2img`.
    """
    image, mask = image_to_tensor(image, "image"), mask_to_tensor(mask)
    check_image_and_mask(image, mask)
    size = _image_size(image)
    size.validate_image(vae_factor(sd))
    request = Request(
        Conditioning(prompt, negative_prompt, num_images, guidance_scale, original_size, crops_coords_top_left,
                     target_size),
        size,
        sampler_settings(sampler, steps, sigma_schedule, spacing, steps_offset, eta, sampler_options),
        Seed(seed, noise_device),
        OutputOptions(output, return_trajectory, progress, non_finite),
        _memory(memory),
        Strength(strength, strength_rule))
    grid, noise_grid = _strength_grids(request, _validate(sd, request, generator, callback))
    strength = request.strength.strength
    with _memory_context(sd, request.memory):
        run = _start(sd, request, generator, callback)
        f = vae_factor(sd)
        latent_mask = F.interpolate(mask, size=(size.height // f, size.width // f)).to(sd.device)  # nearest
        shape = size.latent_shape(request.conditioning.batch, sd.config.unet.out_channels, f)
        z0 = None if strength == 1 and is_inpainting_model(sd) else encode_image(sd, image, run.generator).expand(shape)
        noise = randn(shape, run.generator, sd.device)
        x = noise if strength == 1 else _noised(z0, noise_grid, noise)
        if strength == 1:  # AUTOMATIC1111 writes no "Denoising strength" for inpainting from pure noise
            run = _Run(run.sd, _without_strength(request), run.c, run.uc, run.generator, run.seed, run.callback)
        if is_inpainting_model(sd):
            masked_image_latents = encode_image(sd, image * (mask < 0.5), run.generator)
            c_concat = torch.cat([latent_mask, masked_image_latents], dim=1).expand(shape[0], -1, -1, -1)
            run = _Run(run.sd, run.request, run.c | {"c_concat": c_concat}, run.uc | {"c_concat": c_concat},
                       run.generator, run.seed, run.callback)
            return _finish(run, *_denoise(run, x, grid))
        return _finish(run, *_denoise(run, x, grid, _blend_known_region(z0, latent_mask, noise, grid)))


def _without_strength(request: Request) -> Request:
    from dataclasses import replace

    return replace(request, strength=None)


def _blend_known_region(z0: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor, grid: SamplingGrid):
    """The step hook of 4-channel inpainting: after step ``i`` the next step starts from
    ``mask * x + (1 - mask) * known``, a new tensor (``x`` itself is not touched), where ``known`` is
    the image noised to the level step ``i`` went to, and ``z_0`` itself after the last step.
    CompVis's samplers (``mask=``, ``x0=``) blend *before* each step with fresh noise; diffusers blends
    *after* each step with the initial noise, as here."""

    def hook(i, t, x, pred_x0):
        known = grid.noised(i + 1, z0, noise) if i + 1 < grid.num_steps else z0  # the level step i went to
        return mask * x + (1 - mask) * known

    return hook


# --------------------------------------------------------------------------------------------
# the VAE decode: NaN fallback, slicing, tiling
# --------------------------------------------------------------------------------------------


def decode(sd, latents: torch.Tensor, memory: MemoryOptions | None = None) -> torch.Tensor:
    """Diffusion latents -> ``(B, 3, H, W)`` float32 images in [-1, 1]: ``VAE.decode(latents / scale_factor)``.

    With ``memory.vae_slicing`` one image at a time, with ``memory.vae_tiling`` tile by tile; every decode
    goes through :func:`decode_checked` (re-run in float32 if fp16/bf16 overflowed).
    """
    memory = memory or MemoryOptions()
    memory.validate()
    z = latents.float() / sd.scale_factor

    def decode_batch(z_batch):
        if memory.vae_tiling:
            return decode_tiled(sd, z_batch, memory.tile_size, memory.tile_overlap)
        return decode_checked(sd, z_batch)

    with torch.no_grad(), _channels_last([sd.vae], memory.uses_channels_last(sd.device)):
        if memory.vae_slicing:
            return torch.cat([decode_batch(z[i : i + 1]) for i in range(z.shape[0])])
        return decode_batch(z)


def decode_checked(sd, z: torch.Tensor) -> torch.Tensor:
    """``sd.vae.decode(z)`` (unscaled ``z``) in the VAE's dtype; if that gives inf/NaN, again in float32.

    The SDXL VAE's activations exceed fp16's 65504 and decode to NaN/black images (diffusers keeps it in
    float32 with ``force_upcast``; the fp16-fix VAE rescales its weights). Only the failing decode pays.
    """
    return _with_float32_retry(sd, lambda vae_dtype: sd.vae.decode(z.to(sd.device, vae_dtype)).float(), "decode")


def _with_float32_retry(sd, run, what: str) -> torch.Tensor:
    """``run(vae_dtype)``; if the result has inf/NaN in fp16/bf16, warn and ``run(torch.float32)`` with the VAE upcast."""
    vae_dtype = next(sd.vae.parameters()).dtype
    result = run(vae_dtype)
    if vae_dtype == torch.float32 or torch.isfinite(result).all():
        return result
    warnings.warn(f"the VAE {what} in {str(vae_dtype).removeprefix('torch.')} gave inf/NaN (activations overflowed); "
                  f"running the {what} again in float32. Load the model in float32, or use an fp16-safe VAE, to skip this.",
                  NonFiniteDecodeWarning, stacklevel=3)
    sd.vae.float()
    try:
        return run(torch.float32)
    finally:
        sd.vae.to(vae_dtype)


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: stride ``tile - overlap``, the last tile flush with the edge."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]


def _ramp(length: int, fade: int) -> torch.Tensor:
    """1-D blending weights: rising linearly over ``fade`` pixels at both ends, 1 in between, never 0."""
    x = torch.arange(length, dtype=torch.float32) + 0.5
    return torch.minimum(torch.ones(length), torch.minimum(x, length - x) / max(fade, 1))


def decode_tiled(sd, z: torch.Tensor, tile: int = 64, overlap: int = 16) -> torch.Tensor:
    """Decode ``tile`` x ``tile`` latent tiles that overlap by ``overlap`` and average them with linear ramps.

    Memory grows with the tile, not the image. The decoder sees each tile without its surroundings, so
    pixels near seams (and the mid-block attention, which is global) differ from a full decode; where a
    single tile covers everything the result is the full decode exactly.
    """
    MemoryOptions(vae_tiling=True, tile_size=tile, tile_overlap=overlap).validate()
    f = vae_factor(sd)
    batch, _, h, w = z.shape
    out = torch.zeros(batch, 3, h * f, w * f, device=z.device)
    weight = torch.zeros(1, 1, h * f, w * f, device=z.device)
    for top in _tile_starts(h, tile, overlap):
        for left in _tile_starts(w, tile, overlap):
            piece = decode_checked(sd, z[:, :, top : top + tile, left : left + tile])
            ph, pw = piece.shape[-2:]
            ramp = (_ramp(ph, overlap * f)[:, None] * _ramp(pw, overlap * f)[None, :]).to(z.device)
            rows, cols = slice(top * f, top * f + ph), slice(left * f, left * f + pw)
            out[:, :, rows, cols] += piece.to(out.device) * ramp
            weight[:, :, rows, cols] += ramp
    return out / weight

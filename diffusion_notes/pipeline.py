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
image-to-image in :meth:`diffusion_notes.samplers.SamplingGrid.q_sample` (DDPM Eq. 4 at the grid's first level).

Counterparts: CompVis ``scripts/txt2img.py``, ``scripts/img2img.py`` and the SD 2 inpainting script;
diffusers ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ``StableDiffusionImg2ImgPipeline``,
``StableDiffusionInpaintPipeline``.

Precision: the latents stay float32 between steps and the schedule float64; each UNet call casts its
input to the model's dtype (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32 by default; see
:func:`diffusion_notes.precision.default_dtype`) and its output back.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .guidance import guided_eps_model
from .images import array_to_pil, format_parameters, mask_to_tensor, pil_to_tensor, tensor_to_array
from .noise import randn
from .precision import default_dtype
from .prompts import warn_if_truncated
from .sampling import SamplerSettings, Trajectory, sample
from .samplers import SamplingGrid

__all__ = ["txt2img", "img2img", "inpaint", "Generation", "MemoryOptions", "NonFiniteDecodeWarning", "decode",
           "decode_checked", "decode_tiled", "encode_image", "conditioning", "strength_timesteps", "default_size",
           "default_dtype", "size_multiple", "check_size", "is_inpainting_model", "STRENGTH_RULES"]

STRENGTH_RULES = ("compvis", "diffusers")
OUTPUTS = ("pil", "array", "latent")


class NonFiniteDecodeWarning(UserWarning):
    """The VAE produced inf/NaN in fp16/bf16 and the decode was repeated in float32."""


@dataclass
class MemoryOptions:
    """Ways to fit a small GPU. Slicing is exact; tiling differs from a full decode near tile seams.

    * ``vae_slicing``: decode one image of the batch at a time (diffusers ``enable_vae_slicing``);
    * ``vae_tiling``: decode ``tile_size`` x ``tile_size`` latent tiles overlapping by ``tile_overlap``
      latent pixels and blend them with linear ramps (diffusers ``enable_vae_tiling``);
    * ``upcast_attention``: softmax of every attention layer in float32 (SD 2.1 in fp16 needs it);
    * ``offload_text_encoder``: keep the CLIP encoder(s) on the CPU; only the features go to the GPU;
    * ``channels_last``: NHWC memory format for the convolutions (None: only on CUDA, where it is faster).
    """

    vae_slicing: bool = False
    vae_tiling: bool = False
    tile_size: int = 64
    tile_overlap: int = 16
    upcast_attention: bool = False
    offload_text_encoder: bool = False
    channels_last: bool | None = None


@dataclass
class Generation:
    """What a pipeline call returns.

    ``images``: PIL images (empty for ``output="latent"`` / ``"array"``); ``arrays``: ``(B, H, W, 3)``
    float32 in [0, 1] (diffusers ``output_type="np"``; None for ``output="latent"``); ``latents``: the
    final :math:`z_0` ``(B, 4, h, w)`` in float32, before the VAE; ``trajectory``: the latent ``x`` and
    ``pred_x0`` after every step (``return_trajectory``); ``pred_x0_images``: per step, the decoded
    ``pred_x0`` of every sample (``return_trajectory="decoded"``); ``seed``: the seed of the noise
    (None when a ``generator`` was passed); ``prompts`` / ``settings``: what :meth:`infotext` writes.
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

    def infotext(self, index: int = 0, **extra) -> str:
        """AUTOMATIC1111's ``parameters`` text for image ``index`` (``extra``: e.g. ``model="v1-5"``)."""
        batch = len(self.prompts)
        position = {"batch_size": batch, "batch_pos": index} if batch > 1 else {}
        return format_parameters(self.prompts[index], self.negative_prompts[index], **self.settings, **position,
                                 **extra)


# --------------------------------------------------------------------------------------------
# family defaults
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


def check_size(sd, height: int, width: int, what: str = "height and width") -> None:
    """ValueError unless ``height`` and ``width`` are positive multiples of :func:`size_multiple`."""
    multiple = size_multiple(sd)
    if height % multiple or width % multiple or height <= 0 or width <= 0:
        raise ValueError(f"{what} must be positive multiples of {multiple} for this model (the VAE's "
                         f"downsampling factor); got {height}x{width} "
                         f"(height x width); the nearest are {_round(height, multiple)}x{_round(width, multiple)}.")


def _round(n: int, multiple: int) -> int:
    return max(multiple, round(n / multiple) * multiple)


# --------------------------------------------------------------------------------------------
# conditioning: prompts -> c, uc
# --------------------------------------------------------------------------------------------


def _as_list(prompts, n: int | None = None, what: str = "prompt") -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if n is not None and len(prompts) == 1:
        prompts = prompts * n
    if n is not None and len(prompts) != n:
        raise ValueError(f"got {len(prompts)} negative prompts for {n} prompts; give one, or one per prompt.")
    if not prompts:
        raise ValueError(f"no {what} given; pass a string or a non-empty list of strings.")
    return prompts


def _encode(sd, prompts: list[str], offload: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CLIP features on the UNet's device; with ``offload`` the encoder itself stays on the CPU, in float32
    (CPUs are slow at fp16, and the text encoder runs once per prompt, not once per step)."""
    if offload:
        sd.prompt_encoder.to("cpu", torch.float32)
    context, pooled = sd.encode_prompt(prompts)
    return context.to(sd.device), (pooled.to(sd.device) if pooled is not None else None)


def conditioning(sd, prompts: list[str], negative_prompts: list[str], height: int, width: int,
                 original_size=None, crops_coords_top_left=(0, 0), target_size=None, offload: bool = False):
    """``(c, uc)``: dicts of UNet keyword arguments for the prompts and the negative prompts.

    ``context`` (B, 77, 768) for SD 1.x; SDXL adds ``y`` = pooled text + the size/crop embedding of
    ``(original_size, crops_coords_top_left, target_size)`` (default: the image's size, no crop), the
    same for ``c`` and ``uc`` as in diffusers. SDXL's empty negative prompt is all zeros, not the
    features of '' (sgm ``force_uc_zero_embeddings=["txt"]``, diffusers ``force_zeros_for_empty_prompt``).
    """
    warn_if_truncated(sd.tokenizer, prompts)
    warn_if_truncated(sd.tokenizer, negative_prompts, what="negative prompt")
    context, pooled = _encode(sd, prompts, offload)
    if sd.family == "sdxl" and not any(negative_prompts):
        uc_context, uc_pooled = torch.zeros_like(context), torch.zeros_like(pooled)
    else:
        uc_context, uc_pooled = _encode(sd, negative_prompts, offload)
    c, uc = {"context": context}, {"context": uc_context}
    if sd.family == "sdxl":
        sizes = (original_size or (height, width), crops_coords_top_left, target_size or (height, width))
        c["y"], uc["y"] = sd.sdxl_label(pooled, *sizes), sd.sdxl_label(uc_pooled, *sizes)
    return c, uc


# --------------------------------------------------------------------------------------------
# noise and the model function
# --------------------------------------------------------------------------------------------


def _generator(seed: int | None, generator: torch.Generator | None, noise_device) -> tuple[torch.Generator, int | None]:
    """A CPU generator by default: the same seed then gives the same x_T (and image) on CPU and CUDA."""
    if generator is not None:
        return generator, None  # the caller's generator: no seed we could honestly report
    seed = random.randrange(2**32) if seed is None else int(seed)
    return torch.Generator(noise_device).manual_seed(seed), seed


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


# --------------------------------------------------------------------------------------------
# one generation job: settings shared by txt2img, img2img and inpaint
# --------------------------------------------------------------------------------------------


@dataclass
class _Job:
    sd: object
    c: dict
    uc: dict
    unconditional_guidance_scale: float
    sampler_settings: SamplerSettings
    steps: int
    grid: SamplingGrid  # every level of the run; img2img keeps the last steps (grid.last(n))
    timesteps: np.ndarray  # the grid's visited timesteps, ascending (for strength_timesteps)
    generator: torch.Generator
    seed: int | None
    memory: MemoryOptions
    callback: object
    output: str
    return_trajectory: bool | str
    progress: bool
    prompts: list[str]
    negative_prompts: list[str]
    settings: dict

    @property
    def batch(self) -> int:
        return len(self.prompts)

    @property
    def channels_last(self) -> bool:
        cl = self.memory.channels_last
        return self.sd.device.type == "cuda" if cl is None else cl


def _prepare(sd, prompt, height: int, width: int, negative_prompt="", steps: int = 50, sampler: str = "plms",
             guidance_scale: float = 7.5, eta: float | None = None, num_images: int = 1, seed: int | None = None,
             generator: torch.Generator | None = None, callback=None, output: str = "pil",
             return_trajectory: bool | str = False, spacing: str | None = None, steps_offset: int | None = None,
             set_alpha_to_one: bool | None = None, sigma_schedule: str = "default", sampler_options=None,
             original_size=None, crops_coords_top_left=(0, 0),
             target_size=None, noise_device="cpu", memory: MemoryOptions | None = None,
             progress: bool = False) -> _Job:
    """Check the settings, fix the randomness, encode the prompts and build the sampling grid."""
    given = {k: v for k, v in (("eta", eta), ("set_alpha_to_one", set_alpha_to_one)) if v is not None}
    sampler_settings = SamplerSettings(sampler, steps, sigma_schedule, spacing, steps_offset,
                                       {**given, **(sampler_options or {})})
    grid = sampler_settings.grid(sd.schedule)  # validates every sampler setting (SettingsError)
    if guidance_scale < 0:
        raise ValueError(f"guidance scale must be >= 0 (1 = no guidance, 7.5 is SD's usual), got {guidance_scale}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    check_size(sd, height, width)
    memory = memory or MemoryOptions()
    timesteps = grid.timesteps[:-1].flip(0).numpy()
    generator, seed = _generator(seed, generator, noise_device)

    prompts = [p for p in _as_list(prompt) for _ in range(num_images)]  # diffusers' order: p0, p0, p1, p1
    negative_prompts = [n for n in _as_list(negative_prompt, len(_as_list(prompt)), "negative prompt")
                        for _ in range(num_images)]
    sizes = dict(original_size=original_size, crops_coords_top_left=crops_coords_top_left, target_size=target_size)
    c, uc = conditioning(sd, prompts, negative_prompts, height, width, offload=memory.offload_text_encoder, **sizes)
    settings = dict(steps=steps, sampler=sampler_settings.label, cfg_scale=guidance_scale, seed=seed,
                    size=f"{width}x{height}", eta=eta or None)
    return _Job(sd, c, uc, guidance_scale, sampler_settings, steps, grid, timesteps, generator, seed,
                memory, callback, output, return_trajectory, progress, prompts, negative_prompts, settings)


def _denoise(job: _Job, x: torch.Tensor, grid: SamplingGrid, step_hook=None):
    """Run the sampler from ``x`` over ``grid``; ``step_hook(i, t, x, pred_x0)`` runs
    after each step before the user's callback (inpainting blends the known region there)."""
    if grid.num_steps == 0:  # strength 0: nothing to denoise
        return x, Trajectory(x=[x]) if job.return_trajectory else None
    bar = _progress_bar(grid.num_steps) if job.progress else None

    def callback(i, t, x_i, pred_x0):
        if step_hook is not None:
            step_hook(i, t, x_i, pred_x0)
        if job.callback is not None:
            job.callback(i, t, x_i, pred_x0)
        if bar is not None:
            bar.update()

    sd = job.sd
    if job.channels_last:
        sd.unet.to(memory_format=torch.channels_last)
    eps_model = guided_eps_model(_unet_model(sd, job.channels_last), job.c, job.uc, job.unconditional_guidance_scale)
    try:
        with torch.no_grad(), _attention_upcast(sd, job.memory.upcast_attention):
            result = sample(eps_model, x, sd.schedule, settings=job.sampler_settings, grid=grid,
                            prediction_type=sd.prediction_type, generator=job.generator,
                            callback=callback, return_trajectory=bool(job.return_trajectory))
    finally:
        if bar is not None:
            bar.close()
    return result if job.return_trajectory else (result, None)


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sampling", unit="step")


def _finish(job: _Job, latents: torch.Tensor, trajectory) -> Generation:
    """Decode (unless ``output="latent"``) and package the result."""
    images, arrays, pred_x0_images = [], None, None
    if job.output != "latent":
        arrays = tensor_to_array(decode(job.sd, latents, job.memory))
        images = array_to_pil(arrays) if job.output == "pil" else []
    if job.return_trajectory == "decoded":
        pred_x0_images = [array_to_pil(tensor_to_array(decode(job.sd, p, job.memory))) for p in trajectory.pred_x0]
    return Generation(images, arrays, latents.float(), trajectory, pred_x0_images, job.seed, job.prompts,
                      job.negative_prompts, job.settings)


# --------------------------------------------------------------------------------------------
# text to image
# --------------------------------------------------------------------------------------------


def txt2img(sd, prompt, negative_prompt="", steps: int = 50, sampler: str = "plms", guidance_scale: float = 7.5,
            eta: float | None = None, height: int | None = None, width: int | None = None, num_images: int = 1,
            seed: int | None = None, generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
            callback=None, output: str = "pil", return_trajectory: bool | str = False, **options) -> Generation:
    """Text to image: CompVis ``scripts/txt2img.py``; diffusers ``StableDiffusion(XL)Pipeline.__call__``.

    * ``prompt``: a string or a list (each gives ``num_images`` images); ``negative_prompt`` replaces
      the '' of the unconditional branch (``uc``); ``guidance_scale`` is ``unconditional_guidance_scale``.
    * ``height``/``width``: default per family (:func:`default_size`), multiples of :func:`size_multiple`.
    * ``seed``/``generator``: the source of x_T and of any sampler noise. By default a CPU
      ``torch.Generator`` seeded with ``seed`` (random when None, reported in ``.seed``), so one seed
      gives the same image on CPU and CUDA; ``noise_device="cuda"`` draws on the GPU instead.
    * ``latents``: x_T itself ``(B, 4, h, w)`` (what diffusers' ``latents=`` is), e.g. to compare.
    * ``callback(i, t, x, pred_x0)`` after every step; ``return_trajectory``: True keeps the latent
      ``x``/``pred_x0`` of every step, ``"decoded"`` also decodes each ``pred_x0``.
    * ``output``: ``"pil"`` (images and arrays), ``"array"`` (arrays only), ``"latent"`` (no VAE decode).

    * ``sampler`` (a key of ``diffusion_notes.samplers.SAMPLERS``), ``steps``, ``eta`` (samplers that take it)
      and the ``options`` ``sigma_schedule`` (``"default"``, ``"karras"``, ``"exponential"``), ``spacing``,
      ``steps_offset``, ``set_alpha_to_one`` and ``sampler_options`` (a dict of the sampler's other
      options): :class:`diffusion_notes.sampling.SamplerSettings`, which holds their defaults.

    Other ``options``: SDXL's ``original_size``,
    ``crops_coords_top_left``, ``target_size``, ``noise_device``, ``memory`` (:class:`MemoryOptions`),
    ``progress`` (a tqdm bar).
    """
    _refuse_inpainting_model(sd, "txt2img")
    default_h, default_w = default_size(sd)
    height, width = height or default_h, width or default_w
    job = _prepare(sd, prompt, height, width, negative_prompt, steps, sampler, guidance_scale, eta, num_images, seed,
                   generator, callback, output, return_trajectory, **options)
    shape = (job.batch, sd.config.unet.out_channels, height // vae_factor(sd), width // vae_factor(sd))
    if latents is None:
        x_T = randn(shape, job.generator, sd.device)
    elif tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape} for {job.batch} images of {height}x{width}, "
                         f"got {tuple(latents.shape)}")
    else:
        x_T = latents.to(sd.device, torch.float32)
    return _finish(job, *_denoise(job, x_T, job.grid))


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
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1] (0 keeps the image, 1 starts from pure noise), got {strength}")
    if rule == "compvis":
        t_enc = int(strength * steps)
        if t_enc == 0:  # no step to take: keep the image un-noised, as "strength 0" promises
            return timesteps[:0], None
        if t_enc >= len(timesteps):
            raise ValueError(f"strength {strength} with the compvis rule noises to timestep index {t_enc}, past the "
                             f"last of the {len(timesteps)} timesteps (CompVis fails here too); use a strength below 1 "
                             "or the diffusers strength rule.")
        return timesteps[:t_enc], int(timesteps[t_enc])
    if rule == "diffusers":
        init_timestep = min(int(steps * strength), steps)
        kept = timesteps[:init_timestep]
        return kept, (int(kept[-1]) if len(kept) else None)
    raise ValueError(f"strength_rule must be one of {STRENGTH_RULES}, not {rule!r}")


def _strength_grids(job: _Job, strength: float, rule: str) -> tuple[SamplingGrid, SamplingGrid | None]:
    """The grid img2img denoises over (the last steps of the run) and the grid whose first level the
    image is noised to (the same for the diffusers rule, one level higher for CompVis's; None: no noise)."""
    kept, t_noise = strength_timesteps(job.timesteps, job.steps, strength, rule)
    n = len(kept)
    if t_noise is None:
        return job.grid.last(n), None
    return job.grid.last(n), job.grid.last(n if rule == "diffusers" else n + 1)


def _noised(z0: torch.Tensor, noise_grid: SamplingGrid | None, noise: torch.Tensor) -> torch.Tensor:
    """``z0`` noised to the first level of ``noise_grid`` (DDPM Eq. 4); ``z0`` itself when there is no step to take."""
    if noise_grid is None:
        return z0
    return noise_grid.q_sample(z0, noise)


def _image_tensor(image) -> torch.Tensor:
    return image.float() if isinstance(image, torch.Tensor) else pil_to_tensor(image)


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


def img2img(sd, image, prompt, strength: float = 0.75, strength_rule: str = "compvis", sampler: str = "ddim",
            **kwargs) -> Generation:
    """Image to image (SDEdit, Meng et al. 2022): encode, noise to an intermediate timestep, denoise from there.

    ``image``: PIL, or ``(1, 3, H, W)`` in [-1, 1]; its size is the output's. ``strength`` and
    ``strength_rule``: :func:`strength_timesteps`. Other keyword arguments: those of :func:`txt2img`
    (not ``height``, ``width``, ``latents``). CompVis ``scripts/img2img.py``;
    diffusers ``StableDiffusionImg2ImgPipeline``.
    """
    _refuse_inpainting_model(sd, "img2img")
    image = _image_tensor(image)
    height, width = image.shape[-2:]
    check_size(sd, height, width, "the image's height and width")
    job = _prepare(sd, prompt, height, width, sampler=sampler, **kwargs)
    grid, noise_grid = _strength_grids(job, strength, strength_rule)
    z0 = encode_image(sd, image, job.generator).expand(job.batch, -1, -1, -1)
    x = _noised(z0, noise_grid, randn(z0.shape, job.generator, sd.device))
    job.settings["denoising_strength"] = strength
    return _finish(job, *_denoise(job, x, grid))


# --------------------------------------------------------------------------------------------
# inpainting
# --------------------------------------------------------------------------------------------


def is_inpainting_model(sd) -> bool:
    """Inpainting checkpoints read 9 channels: 4 latents, 1 mask, 4 masked-image latents."""
    return sd.config.unet.in_channels == sd.config.unet.out_channels + 5


def _refuse_inpainting_model(sd, what: str) -> None:
    if is_inpainting_model(sd):
        raise ValueError(f"this is an inpainting checkpoint (its UNet reads {sd.config.unet.in_channels} channels); "
                         f"{what} needs an ordinary one, or use inpaint() / the inpaint command with it.")


def inpaint(sd, image, mask, prompt, strength: float = 1.0, strength_rule: str = "diffusers", sampler: str = "ddim",
            **kwargs) -> Generation:
    """Repaint where ``mask`` is white (1), keep the rest.

    * 9-channel inpainting checkpoints (``sd-v1-5-inpainting``, ``512-inpainting-ema``): the UNet
      reads ``cat([x, mask, masked_image_latents])`` at every step (CompVis hybrid ``c_concat``,
      diffusers ``StableDiffusionInpaintPipeline``); the masked image is ``image * (mask < 0.5)``.
    * ordinary 4-channel checkpoints: RePaint-style blending (Lugmayr et al. 2022; diffusers' legacy
      path): after each step the kept region is replaced by the image noised to the next timestep,
      ``x = mask * x + (1 - mask) * q_sample(z_0, t_next, noise)``, and by ``z_0`` itself after the last.

    ``strength = 1`` (default) starts from pure noise, as these models were trained; lower values start
    from the noised image (:func:`strength_timesteps`). Other keyword arguments: those of :func:`txt2img`.
    """
    image, mask = _image_tensor(image), mask_to_tensor(mask)
    if image.shape[-2:] != mask.shape[-2:]:
        (h, w), (mh, mw) = image.shape[-2:], mask.shape[-2:]
        raise ValueError(f"the image is {w}x{h} but the mask is {mw}x{mh} (width x height); "
                         "they must be the same size.")
    height, width = image.shape[-2:]
    check_size(sd, height, width, "the image's height and width")
    job = _prepare(sd, prompt, height, width, sampler=sampler, **kwargs)
    grid, noise_grid = _strength_grids(job, strength, strength_rule)
    latent_size = (height // vae_factor(sd), width // vae_factor(sd))
    latent_mask = F.interpolate(mask, size=latent_size).to(sd.device)  # nearest, as CompVis and diffusers
    shape = (job.batch, sd.config.unet.out_channels, *latent_size)

    z0 = None if strength == 1 and is_inpainting_model(sd) else encode_image(sd, image, job.generator).expand(shape)
    noise = randn(shape, job.generator, sd.device)
    x = noise if strength == 1 else _noised(z0, noise_grid, noise)
    job.settings["denoising_strength"] = strength if strength != 1 else None

    if is_inpainting_model(sd):
        masked_image_latents = encode_image(sd, image * (mask < 0.5), job.generator)
        c_concat = torch.cat([latent_mask, masked_image_latents], dim=1).expand(job.batch, -1, -1, -1)
        job.c["c_concat"] = job.uc["c_concat"] = c_concat
        return _finish(job, *_denoise(job, x, grid))
    return _finish(job, *_denoise(job, x, grid, _blend_known_region(z0, latent_mask, noise, grid)))


def _blend_known_region(z0: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor, grid: SamplingGrid):
    """The step hook of 4-channel inpainting. It writes into the sampler's ``x`` in place, so the next
    step starts from the blended latents. CompVis's samplers (``mask=``, ``x0=``) blend *before* each
    step with fresh noise; diffusers blends *after* each step with the initial noise, as here."""

    def hook(i, t, x, pred_x0):
        known = grid.noised(i + 1, z0, noise) if i + 1 < grid.num_steps else z0  # the level step i went to
        x.copy_(mask * x + (1 - mask) * known)

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
    if memory.channels_last or (memory.channels_last is None and sd.device.type == "cuda"):
        sd.vae.to(memory_format=torch.channels_last)
    z = latents.float() / sd.scale_factor

    def decode_batch(z_batch):
        if memory.vae_tiling:
            return decode_tiled(sd, z_batch, memory.tile_size, memory.tile_overlap)
        return decode_checked(sd, z_batch)

    with torch.no_grad():
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
    if overlap >= tile:
        raise ValueError(f"the tile overlap ({overlap}) must be smaller than the tile ({tile})")
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

r"""The settings of one generation, as frozen typed objects: every default and every check in one place.

``txt2img``, ``img2img`` and ``inpaint`` (:mod:`diffusion_notes.pipeline`) turn their keyword
arguments into these objects, call each one's ``validate()`` once, and from then on only read them;
the command line (:mod:`diffusion_notes.cli`) builds the same objects from its flags. A failed check
raises :class:`~diffusion_notes.errors.SettingsError` carrying the option's Python name (``option``),
which the command line maps back to its flag (``guidance_scale`` -> ``--scale``).

=============================  ==============================================================
object                         what it holds
=============================  ==============================================================
:class:`Conditioning`          prompts, negative prompts, images per prompt, guidance scale, SDXL sizes
:class:`ImageSize`             height and width in pixels (multiples of the VAE's factor)
:class:`Seed`                  the seed (0 to 2**32 - 1; None or -1: random, then reported)
:class:`Strength`              img2img / inpaint strength and the rule that turns it into steps
:class:`OutputOptions`         what to return (PIL, arrays, latents), trajectory, progress, non-finite policy
:class:`MemoryOptions`         VAE slicing/tiling, attention upcast, text-encoder offload, channels-last
=============================  ==============================================================

The sampler's own settings (name, steps, spacing, eta, ...) are
:class:`diffusion_notes.sampling.SamplerSettings`. The PNG ``parameters`` text is derived from these
objects by :func:`infotext_fields`.
"""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass

import numpy as np

from .errors import SettingsError

__all__ = ["Conditioning", "ImageSize", "Seed", "Strength", "OutputOptions", "MemoryOptions", "STRENGTH_RULES",
           "OUTPUTS", "NON_FINITE_POLICIES", "SEED_MAX", "RANDOM_SEED", "IMAGE_SAMPLER", "IMG2IMG_STRENGTH",
           "INPAINT_STRENGTH", "check_real", "check_integer",
           "latent_memory_bytes", "available_memory_bytes", "check_fits_in_memory"]

STRENGTH_RULES = ("compvis", "diffusers")
OUTPUTS = ("pil", "array", "latent")
#: What to do when the sampled latents or the decoded images hold NaN/inf: stop, or warn and keep going.
NON_FINITE_POLICIES = ("error", "warn")
#: ``torch.Generator.manual_seed`` keeps 64 bits, but a seed is only portable (CUDA's Philox, numpy,
#: AUTOMATIC1111) within 32 bits; larger seeds are refused rather than silently folded.
SEED_MAX = 2**32 - 1
#: AUTOMATIC1111's "random seed"; the seed actually drawn is reported and written to the PNG.
RANDOM_SEED = -1
#: img2img and inpaint sample with DDIM by default, as CompVis's ``scripts/img2img.py`` does (txt2img: PLMS,
#: ``SamplerSettings.sampler``).
IMAGE_SAMPLER = "ddim"


# --------------------------------------------------------------------------------------------
# checks shared by every settings object
# --------------------------------------------------------------------------------------------


def check_real(option: str, value, low: float | None = None, high: float | None = None, hint: str = "") -> float:
    """``value`` as a float; SettingsError unless it is a finite real number within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SettingsError(option, f"{option} must be a number, got {value!r}{hint}")
    value = float(value)
    if not math.isfinite(value):
        raise SettingsError(option, f"{option} must be a finite number, got {value}{hint}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else (f"<= {high}" if low is None else f"between {low} and {high}")
        raise SettingsError(option, f"{option} must be {bounds}, got {value}{hint}")
    return value


def check_integer(option: str, value, low: int | None = None, high: int | None = None, hint: str = "") -> int:
    """``value`` as an int; SettingsError unless it is an integer (not a bool or a float) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SettingsError(option, f"{option} must be a whole number, got {value!r}{hint}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else (f"<= {high}" if low is None else f"from {low} to {high}")
        raise SettingsError(option, f"{option} must be {bounds}, got {value}{hint}")
    return value


def _check_choice(option: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise SettingsError(option, f"{option} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def _check_flag(option: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise SettingsError(option, f"{option} must be True or False, got {value!r}")


# --------------------------------------------------------------------------------------------
# the settings objects
# --------------------------------------------------------------------------------------------


def _prompt_list(option: str, value) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise SettingsError(option, f"{option} must be a string or a list of strings, got {type(value).__name__}")
    bad = [p for p in items if not isinstance(p, str)]
    if bad:
        raise SettingsError(option, f"{option} must hold strings only, got {bad[0]!r}")
    return list(items)


@dataclass(frozen=True)
class Conditioning:
    """What the text encoder and guidance need: CompVis ``c``, ``uc`` and ``unconditional_guidance_scale``.

    ``prompt``: a string or a list (each gives ``num_images`` images, diffusers' order p0, p0, p1, p1);
    ``negative_prompt``: one for all or one per prompt (replaces the '' of ``uc``); ``guidance_scale``
    :math:`s` in :math:`\epsilon = \epsilon_u + s(\epsilon_c - \epsilon_u)` (1 = no guidance); SDXL's
    ``original_size``, ``crops_coords_top_left``, ``target_size`` in (height, width) pixels.
    """

    prompt: str | tuple[str, ...] | list[str]
    negative_prompt: str | tuple[str, ...] | list[str] = ""
    num_images: int = 1
    guidance_scale: float = 7.5
    original_size: tuple[int, int] | None = None
    crops_coords_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None

    def validate(self) -> None:
        prompts = _prompt_list("prompt", self.prompt)
        if not prompts:
            raise SettingsError("prompt", "no prompt given; pass a string or a non-empty list of strings")
        negatives = _prompt_list("negative_prompt", self.negative_prompt)
        if len(negatives) not in (1, len(prompts)):
            raise SettingsError("negative_prompt", f"got {len(negatives)} negative prompts for {len(prompts)} "
                                "prompts; give one, or one per prompt")
        check_integer("num_images", self.num_images, 1, 4096)
        check_real("guidance_scale", self.guidance_scale, 0.0,
                   hint=" (1 = no guidance, 7.5 is Stable Diffusion's usual)")
        for option in ("original_size", "crops_coords_top_left", "target_size"):
            value = getattr(self, option)
            if value is None and option != "crops_coords_top_left":
                continue
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise SettingsError(option, f"{option} must be a (height, width) pair of pixels, got {value!r}")
            low = 0 if option == "crops_coords_top_left" else 1
            for v in value:
                check_integer(option, v, low, 1 << 20)

    @property
    def prompts(self) -> list[str]:
        """Every image's prompt: each prompt repeated ``num_images`` times."""
        return [p for p in _prompt_list("prompt", self.prompt) for _ in range(self.num_images)]

    @property
    def negative_prompts(self) -> list[str]:
        """Every image's negative prompt, in the order of :attr:`prompts`."""
        prompts, negatives = _prompt_list("prompt", self.prompt), _prompt_list("negative_prompt", self.negative_prompt)
        negatives = negatives * len(prompts) if len(negatives) == 1 else negatives
        return [n for n in negatives for _ in range(self.num_images)]

    @property
    def batch(self) -> int:
        return len(self.prompts)


#: The largest side accepted before any memory estimate: far beyond any GPU, small enough for exact int math.
_MAX_SIDE = 1 << 20


@dataclass(frozen=True)
class ImageSize:
    """Height and width in pixels; both positive multiples of the VAE's factor (8 for every SD release,
    see :func:`diffusion_notes.pipeline.vae_factor`), the one size rule of the API and the command line."""

    height: int
    width: int

    def validate(self, multiple: int) -> None:
        for option in ("height", "width"):
            value = check_integer(option, getattr(self, option), 1, _MAX_SIDE, hint=" (pixels)")
            if value % multiple:
                below, above = value // multiple * multiple, (value // multiple + 1) * multiple
                nearest = f"{below} or {above}" if below else f"{above}"
                raise SettingsError(option, f"{option} {value} is not a multiple of {multiple} (the VAE's "
                                    f"downsampling factor for this model); use {nearest}")

    def latent_shape(self, batch: int, channels: int, multiple: int) -> tuple[int, int, int, int]:
        return (batch, channels, self.height // multiple, self.width // multiple)

    def validate_image(self, multiple: int, option: str = "image") -> None:
        """:meth:`validate` for a size that comes from a picture: reported against ``option``."""
        try:
            self.validate(multiple)
        except SettingsError as err:
            nearest = "x".join(str(max(multiple, round(v / multiple) * multiple)) for v in (self.width, self.height))
            raise SettingsError(option, f"the {option} is {self.width}x{self.height} (width x height); both sides "
                                f"must be multiples of {multiple} for this model (the VAE's factor): resize or crop "
                                f"it to {nearest}") from err

    @property
    def label(self) -> str:
        """AUTOMATIC1111's ``Size: WxH``."""
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Seed:
    """The seed of the noise: 0 to 2**32 - 1, or None / -1 for a random one (reported afterwards).

    ``noise_device``: where the generator draws (CPU by default, so one seed gives one image everywhere).
    """

    seed: int | None = None
    noise_device: str = "cpu"

    def validate(self) -> None:
        if self.seed is not None:
            check_integer("seed", self.seed, RANDOM_SEED, SEED_MAX, hint=" (0 to 2**32 - 1; -1 or None: random)")
        import torch

        try:
            torch.Generator(self.noise_device)
        except (RuntimeError, TypeError) as exc:
            raise SettingsError("noise_device", f"noise_device={self.noise_device!r} cannot hold a generator here "
                                f"({str(exc).splitlines()[0]}); use 'cpu'") from None

    def resolve(self) -> int:
        """The seed to use: the given one, or a fresh random one for None / -1."""
        return random.randrange(SEED_MAX + 1) if self.seed is None or self.seed == RANDOM_SEED else int(self.seed)


@dataclass(frozen=True)
class Strength:
    r"""How far img2img / inpainting noise the image: 0 keeps it, 1 starts from pure noise; ``rule``
    says how strength becomes steps (:func:`diffusion_notes.pipeline.strength_timesteps`)."""

    strength: float
    rule: str = "compvis"

    def validate(self) -> None:
        check_real("strength", self.strength, 0.0, 1.0, hint=" (0 keeps the image, 1 starts from pure noise)")
        _check_choice("strength_rule", self.rule, STRENGTH_RULES)


@dataclass(frozen=True)
class OutputOptions:
    """What a pipeline call returns and how it reports.

    ``output``: ``"pil"`` (images and arrays), ``"array"`` (arrays only) or ``"latent"`` (no VAE decode);
    ``return_trajectory``: True keeps every step's ``x``/``pred_x0``, ``"decoded"`` also decodes each
    ``pred_x0``; ``progress``: a tqdm bar; ``non_finite``: ``"error"`` stops when the final latents or the
    decoded images hold NaN/inf, ``"warn"`` returns them with a warning (a sampler step that produces
    NaN/inf stops the sampler in either case: there is nothing left to continue from).
    """

    output: str = "pil"
    return_trajectory: bool | str = False
    progress: bool = False
    non_finite: str = "error"

    def validate(self) -> None:
        _check_choice("output", self.output, OUTPUTS)
        if not (isinstance(self.return_trajectory, bool) or self.return_trajectory == "decoded"):
            raise SettingsError("return_trajectory", "return_trajectory must be False, True or 'decoded', "
                                f"not {self.return_trajectory!r}")
        if self.return_trajectory == "decoded" and self.output == "latent":
            raise SettingsError("return_trajectory", "return_trajectory='decoded' needs the VAE, but output='latent' "
                                "skips it; use return_trajectory=True, or another output")
        _check_flag("progress", self.progress)
        _check_choice("non_finite", self.non_finite, NON_FINITE_POLICIES)


@dataclass(frozen=True)
class MemoryOptions:
    """Ways to fit a small GPU. Slicing is exact; tiling differs from a full decode near tile seams.

    * ``vae_slicing``: decode one image of the batch at a time (diffusers ``enable_vae_slicing``);
    * ``vae_tiling``: decode ``tile_size`` x ``tile_size`` latent tiles overlapping by ``tile_overlap``
      latent pixels and blend them with linear ramps (diffusers ``enable_vae_tiling``);
    * ``upcast_attention``: softmax of every attention layer in float32 (SD 2.1 in fp16 needs it);
    * ``offload_text_encoder``: run the CLIP encoder(s) on the CPU in float32; only the features go to
      the GPU (the encoders are put back where they were afterwards);
    * ``channels_last``: NHWC memory format for the convolutions (None: only on CUDA, where it is faster);
      the networks get their memory format back afterwards.
    """

    vae_slicing: bool = False
    vae_tiling: bool = False
    tile_size: int = 64
    tile_overlap: int = 16
    upcast_attention: bool = False
    offload_text_encoder: bool = False
    channels_last: bool | None = None

    def validate(self) -> None:
        for option in ("vae_slicing", "vae_tiling", "upcast_attention", "offload_text_encoder"):
            _check_flag(option, getattr(self, option))
        if self.channels_last is not None:
            _check_flag("channels_last", self.channels_last)
        tile = check_integer("tile_size", self.tile_size, 1, hint=" (latent pixels)")
        overlap = check_integer("tile_overlap", self.tile_overlap, 0, hint=" (latent pixels)")
        if overlap >= tile:
            raise SettingsError("tile_overlap", f"the tile overlap ({overlap}) must be smaller than the tile ({tile})")

    def uses_channels_last(self, device) -> bool:
        return (getattr(device, "type", str(device)) == "cuda") if self.channels_last is None else self.channels_last


#: The defaults of img2img (CompVis ``scripts/img2img.py``: 0.75) and inpainting (pure noise, as
#: inpainting models were trained; diffusers' rule, where strength 1 exists).
IMG2IMG_STRENGTH = Strength(0.75, "compvis")
INPAINT_STRENGTH = Strength(1.0, "diffusers")


# --------------------------------------------------------------------------------------------
# memory: refuse sizes that cannot fit before anything is loaded
# --------------------------------------------------------------------------------------------


def latent_memory_bytes(batch: int, height: int, width: int, multiple: int, latent_channels: int = 4,
                        vae_channels: int = 128) -> int:
    """A lower bound on the memory one generation needs, in bytes (float32 activations).

    The decoder's last block holds ``vae_channels`` full-resolution feature maps (128 for every SD
    VAE) of the whole batch at once, beside the decoded image itself; the latents and the UNet's
    activations come on top. (With VAE slicing it is one image at a time, with tiling one tile.)
    """
    pixels = height * width
    return 4 * batch * (pixels * (vae_channels + 3) + latent_channels * pixels // (multiple * multiple))


def available_memory_bytes(device=None) -> int | None:
    """The total memory of ``device`` (a CUDA GPU's, else the machine's RAM), or None when unknown."""
    import torch

    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    try:
        import os

        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(size: ImageSize, batch: int, multiple: int, device=None, vae_channels: int = 128,
                         memory: MemoryOptions | None = None) -> None:
    """SettingsError (``height``) when even the lower bound of :func:`latent_memory_bytes` exceeds the
    device's total memory: such a size would only fail after minutes, or swap the machine to a halt."""
    memory = memory or MemoryOptions()
    decoded_batch = 1 if memory.vae_slicing or memory.vae_tiling else batch
    needed = latent_memory_bytes(decoded_batch, size.height, size.width, multiple, vae_channels=vae_channels)
    if memory.vae_tiling:  # the decoder then holds one tile, but the output image is still whole
        tile = memory.tile_size * multiple
        needed = latent_memory_bytes(1, min(size.height, tile), min(size.width, tile), multiple,
                                     vae_channels=vae_channels) + 4 * 3 * batch * size.height * size.width
    total = available_memory_bytes(device)
    if total is not None and needed > total:
        raise SettingsError("height", f"{size.height}x{size.width} pixels (height x width) for {batch} image(s) needs "
                            f"at least {needed / 2**30:.1f} GiB, more than the {total / 2**30:.1f} GiB this device has; "
                            "choose a smaller height and width (or fewer images)")


# --------------------------------------------------------------------------------------------
# the PNG's parameters, from the settings
# --------------------------------------------------------------------------------------------


def infotext_fields(sampler, conditioning: Conditioning, size: ImageSize, seed: int | None,
                    strength: Strength | None = None) -> dict:
    """AUTOMATIC1111's ``parameters`` fields (:func:`diffusion_notes.images.format_parameters`) of one request.

    ``sampler`` (a :class:`~diffusion_notes.sampling.SamplerSettings`) provides ``steps``, ``label`` and
    the ``eta`` given; ``seed`` is the seed actually used (None when the caller's own generator was
    used: no seed could honestly be written).
    """
    eta = sampler.options.get("eta")
    return dict(steps=sampler.steps, sampler=sampler.label, cfg_scale=conditioning.guidance_scale, seed=seed,
                size=size.label, eta=eta if eta else None,
                denoising_strength=strength.strength if strength is not None else None)

r"""The settings of one generation, as frozen typed objects: every default and every check in one place.

Each object checks itself when it is made (``__post_init__``), so an invalid one cannot exist and no
consumer checks it again. What depends on the model (the size rule, the number of trained timesteps,
whether the memory suffices) is checked once by :meth:`Request.check_against` with the model's
:class:`~diffusion_notes.geometry.ModelGeometry`: by the command line from the file's header before
loading, by the pipeline from the loaded model. ``txt2img``, ``img2img`` and ``inpaint``
(:mod:`diffusion_notes.pipeline`) and the command line (:mod:`diffusion_notes.cli`) all build their
:class:`Request` with :meth:`Request.build`. A failed check raises
:class:`~diffusion_notes.errors.SettingsError` carrying the option's Python name (``option``), which
the command line maps back to its flag (``guidance_scale`` -> ``--scale``).

=============================  ==============================================================
object                         what it holds
=============================  ==============================================================
:class:`Conditioning`          prompts, negative prompts, images per prompt, guidance scale, SDXL sizes
:class:`ImageSize`             height and width in pixels (multiples of the VAE's factor)
:class:`Seed`                  the seed (0 to 2**32 - 1; None or -1: random, then reported)
:class:`Strength`              img2img / inpaint strength and the rule that turns it into steps
:class:`OutputOptions`         what to return (PIL, arrays, latents), trajectory, progress, non-finite policy
:class:`MemoryOptions`         VAE slicing/tiling, attention upcast, text-encoder offload, channels-last
:class:`Request`               all of the above plus the sampler's settings: one generation
=============================  ==============================================================

The sampler's own settings (name, steps, spacing, eta, ...) are
:class:`diffusion_notes.sampling.SamplerSettings`. The PNG ``parameters`` text is derived from these
objects by :func:`diffusion_notes.infotext.infotext_fields`; the memory estimate and the memory
options' mechanics are in :mod:`diffusion_notes.memory`.
The checks themselves (numbers, whole numbers, choices, flags) are :mod:`diffusion_notes.checks`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, replace

from .adapters.prompt_tags import TAG, check_lora_dir, prompt_loras
from .checks import check_choice as _check_choice
from .checks import check_flag as _check_flag
from .checks import check_integer, check_real
from .errors import SettingsError
from .init_image import STRENGTH_RULES, check_strength, strength_grids
from .memory import check_fits_in_memory
from .sampling import SamplerSettings

__all__ = ["Conditioning", "ImageSize", "Seed", "Strength", "OutputOptions", "MemoryOptions", "Request",
           "STRENGTH_RULES", "OUTPUTS", "NON_FINITE_POLICIES", "SEED_MAX", "RANDOM_SEED", "IMAGE_SAMPLER",
           "IMG2IMG_STRENGTH", "INPAINT_STRENGTH", "check_real", "check_integer", "check_tiles"]

OUTPUTS = ("pil", "array", "latent")
#: What to do when the sampled latents or the decoded images hold NaN/inf: stop, or warn and keep going.
NON_FINITE_POLICIES = ("error", "warn")
#: ``torch.Generator.manual_seed`` keeps 64 bits, but a seed is only portable (CUDA's Philox, numpy,
#: AUTOMATIC1111) within 32 bits; larger seeds are refused rather than silently folded.
SEED_MAX = 2**32 - 1
#: How prompts are read: CompVis's plain text (the default: prompts with literal brackets reproduce) or
#: AUTOMATIC1111's emphasis syntax with long prompts (``diffusion_notes.prompts``).
PROMPT_SYNTAXES = ("plain", "a1111")
#: AUTOMATIC1111's "random seed"; the seed actually drawn is reported and written to the PNG.
RANDOM_SEED = -1
#: img2img and inpaint sample with DDIM by default, as CompVis's ``scripts/img2img.py`` does (txt2img: PLMS,
#: ``SamplerSettings.sampler``).
IMAGE_SAMPLER = "ddim"


# --------------------------------------------------------------------------------------------
# checks shared by every settings object
# --------------------------------------------------------------------------------------------


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
    r"""What the text encoder and guidance need: CompVis ``c``, ``uc`` and ``unconditional_guidance_scale``.

    ``prompt``: a string or a list (each gives ``num_images`` images, diffusers' order p0, p0, p1, p1);
    ``negative_prompt``: one for all or one per prompt (replaces the '' of ``uc``); ``guidance_scale``
    :math:`s` in :math:`\epsilon = \epsilon_u + s(\epsilon_c - \epsilon_u)` (1 = no guidance); SDXL's
    ``original_size``, ``crops_coords_top_left``, ``target_size`` in (height, width) pixels;
    ``prompt_syntax``: ``"plain"`` (CompVis: brackets are characters, 77 tokens) or ``"a1111"``
    (AUTOMATIC1111's ``(word:1.2)`` emphasis and prompts of any length in 75-token chunks,
    :func:`diffusion_notes.prompts.parse_prompt_attention`); ``clip_skip``: AUTOMATIC1111's numbering
    (1 = the last layer, 2 = the penultimate; diffusers' ``clip_skip`` is one less); ``lora_dir``: the
    folder where the ``<lora:name:weight>`` tags of ``"a1111"`` prompts find their files (each tag is
    checked here: its syntax, and that the folder has the file; :mod:`diffusion_notes.adapters.prompt_tags`).
    """

    prompt: str | tuple[str, ...] | list[str]
    negative_prompt: str | tuple[str, ...] | list[str] = ""
    num_images: int = 1
    guidance_scale: float = 7.5
    original_size: tuple[int, int] | None = None
    crops_coords_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None
    prompt_syntax: str = "plain"
    clip_skip: int = 1
    lora_dir: str | os.PathLike | None = None

    def __post_init__(self):
        _check_choice("prompt_syntax", self.prompt_syntax, PROMPT_SYNTAXES)
        check_integer("clip_skip", self.clip_skip, 1, 64, hint=" (AUTOMATIC1111's numbering: 1 = the last layer)")
        prompts = _prompt_list("prompt", self.prompt)
        if not prompts:
            raise SettingsError("prompt", "no prompt given; pass a string or a non-empty list of strings")
        negatives = _prompt_list("negative_prompt", self.negative_prompt)
        if len(negatives) not in (1, len(prompts)):
            raise SettingsError("negative_prompt", f"got {len(negatives)} negative prompts for {len(prompts)} "
                                "prompts; give one, or one per prompt")
        if self.lora_dir is not None:
            check_lora_dir(self.lora_dir)
        if self.prompt_syntax == "a1111":
            prompt_loras(prompts, negatives, self.lora_dir)  # every tag readable and its file present
        elif self.lora_dir is not None and any(TAG.search(p) for p in prompts + negatives):
            raise SettingsError("prompt_syntax", "a LoRA folder is given and a prompt has a <lora:...> tag, but the "
                                "plain syntax reads tags as text; use prompt_syntax='a1111' to apply them")
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

    def loras(self) -> tuple[list[str], list[str], list]:
        """``(prompts, negative prompts, [(file, weight), ...])``: with ``prompt_syntax="a1111"``, the texts
        to encode (``<lora:...>`` tags removed) and the LoRAs the tags name (:func:`~diffusion_notes.adapters.
        prompt_tags.prompt_loras`); in the plain syntax the prompts as they are, and no LoRA."""
        if self.prompt_syntax != "a1111":
            return self.prompts, self.negative_prompts, []
        return prompt_loras(self.prompts, self.negative_prompts, self.lora_dir)

    @property
    def batch(self) -> int:
        return len(self.prompts)


#: The largest side accepted before any memory estimate: far beyond any GPU, small enough for exact int math.
_MAX_SIDE = 1 << 20


@dataclass(frozen=True)
class ImageSize:
    """Height and width in pixels, positive whole numbers (None: the model's default for that side,
    filled in by :meth:`Request.check_against`). That they are multiples of the VAE's factor
    (8 for every SD release; :attr:`diffusion_notes.geometry.ModelGeometry.vae_factor`) depends on the
    model: :meth:`check_multiple`, called by :meth:`Request.check_against`, the one size rule of the API
    and the command line. ``from_image``: the size came from a picture, and errors name that picture."""

    height: int | None
    width: int | None
    from_image: str | None = None

    def __post_init__(self):
        for option in ("height", "width"):
            if getattr(self, option) is not None or self.from_image:
                check_integer(self.from_image or option, getattr(self, option), 1, _MAX_SIDE, hint=" (pixels)")

    def or_default(self, default: tuple[int, int] | None) -> "ImageSize":
        """This size with a side given as None taken from ``default`` (height, width)."""
        if default is None or (self.height is not None and self.width is not None):
            return self
        return replace(self, height=default[0] if self.height is None else self.height,
                       width=default[1] if self.width is None else self.width)

    def check_multiple(self, multiple: int) -> None:
        """SettingsError unless both sides are multiples of ``multiple`` (naming the nearest ones that are)."""
        for option in ("height", "width"):
            value = getattr(self, option)
            if value is None or value % multiple == 0:
                continue
            if self.from_image:
                nearest = "x".join(str(max(multiple, round(v / multiple) * multiple)) for v in (self.width, self.height))
                raise SettingsError(self.from_image, f"the {self.from_image} is {self.width}x{self.height} (width x "
                                    f"height); both sides must be multiples of {multiple} for this model (the VAE's "
                                    f"factor): resize or crop it to {nearest}")
            below, above = value // multiple * multiple, (value // multiple + 1) * multiple
            nearest = f"{below} or {above}" if below else f"{above}"
            raise SettingsError(option, f"{option} {value} is not a multiple of {multiple} (the VAE's "
                                f"downsampling factor for this model); use {nearest}")

    def latent_shape(self, batch: int, channels: int, multiple: int) -> tuple[int, int, int, int]:
        return (batch, channels, self.height // multiple, self.width // multiple)

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

    def __post_init__(self):
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
    says how strength becomes steps (:func:`diffusion_notes.init_image.strength_timesteps`)."""

    strength: float
    rule: str = "compvis"

    def __post_init__(self):
        check_strength(self.strength, self.rule)


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

    def __post_init__(self):
        _check_choice("output", self.output, OUTPUTS)
        if not (isinstance(self.return_trajectory, bool) or self.return_trajectory == "decoded"):
            raise SettingsError("return_trajectory", "return_trajectory must be False, True or 'decoded', "
                                f"not {self.return_trajectory!r}")
        if self.return_trajectory == "decoded" and self.output == "latent":
            raise SettingsError("return_trajectory", "return_trajectory='decoded' needs the VAE, but output='latent' "
                                "skips it; use return_trajectory=True, or another output")
        _check_flag("progress", self.progress)
        _check_choice("non_finite", self.non_finite, NON_FINITE_POLICIES)


def check_tiles(tile_size, tile_overlap) -> tuple[int, int]:
    """The VAE tiling's tile and overlap (latent pixels) as ints; SettingsError unless 0 <= overlap < tile."""
    tile = check_integer("tile_size", tile_size, 1, hint=" (latent pixels)")
    overlap = check_integer("tile_overlap", tile_overlap, 0, hint=" (latent pixels)")
    if overlap >= tile:
        raise SettingsError("tile_overlap", f"the tile overlap ({overlap}) must be smaller than the tile ({tile})")
    return tile, overlap


@dataclass(frozen=True)
class MemoryOptions:
    """Ways to fit a small GPU. Slicing is exact; tiling differs from a full decode near tile seams.
    How each is applied (and undone): :mod:`diffusion_notes.memory`.

    * ``vae_slicing``: decode one image of the batch at a time (diffusers ``enable_vae_slicing``);
    * ``vae_tiling``: decode ``tile_size`` x ``tile_size`` latent tiles overlapping by ``tile_overlap``
      latent pixels and blend them with linear ramps (diffusers ``enable_vae_tiling``);
    * ``upcast_attention``: softmax of every attention layer in float32 (SD 2.1 in fp16 needs it);
    * ``offload_text_encoder``: run the CLIP encoder(s) on the CPU in float32; only the features go to
      the GPU (the encoders are put back where they were afterwards);
    * ``channels_last``: NHWC memory format for the plain convolutions (None: only on CUDA, where it is
      faster); the networks get their memory format back afterwards. Convolutions prepacked for oneDNN
      (CPU, :mod:`diffusion_notes.models.prepacked`) always run channels-last and are left as they are.
    """

    vae_slicing: bool = False
    vae_tiling: bool = False
    tile_size: int = 64
    tile_overlap: int = 16
    upcast_attention: bool = False
    offload_text_encoder: bool = False
    channels_last: bool | None = None

    def __post_init__(self):
        for option in ("vae_slicing", "vae_tiling", "upcast_attention", "offload_text_encoder"):
            _check_flag(option, getattr(self, option))
        if self.channels_last is not None:
            _check_flag("channels_last", self.channels_last)
        check_tiles(self.tile_size, self.tile_overlap)

    def uses_channels_last(self, device) -> bool:
        return (getattr(device, "type", str(device)) == "cuda") if self.channels_last is None else self.channels_last


#: The defaults of img2img (CompVis ``scripts/img2img.py``: 0.75) and inpainting (pure noise, as
#: inpainting models were trained; diffusers' rule, where strength 1 exists).
IMG2IMG_STRENGTH = Strength(0.75, "compvis")
INPAINT_STRENGTH = Strength(1.0, "diffusers")


# --------------------------------------------------------------------------------------------
# one generation
# --------------------------------------------------------------------------------------------


def _instance(option: str, value, kind: type):
    if not isinstance(value, kind):
        raise SettingsError(option, f"{option} must be a {kind.__name__}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Request:
    """Every setting of one generation. Each part checked itself when made; :meth:`check_against` adds
    what depends on the model. A side of ``size`` that is None: the model's default (filled in by
    :meth:`check_against`)."""

    conditioning: Conditioning
    sampler: SamplerSettings
    size: ImageSize = ImageSize(None, None)
    seed: Seed = Seed()
    output: OutputOptions = OutputOptions()
    memory: MemoryOptions = MemoryOptions()
    strength: Strength | None = None

    def __post_init__(self):
        for option, kind in (("conditioning", Conditioning), ("sampler", SamplerSettings), ("size", ImageSize),
                             ("seed", Seed), ("output", OutputOptions), ("memory", MemoryOptions)):
            _instance(option, getattr(self, option), kind)
        if self.strength is not None:
            _instance("strength", self.strength, Strength)

    @classmethod
    def build(cls, prompt, *, negative_prompt="", num_images: int = 1, guidance_scale: float = 7.5,
              original_size=None, crops_coords_top_left=(0, 0), target_size=None,
              prompt_syntax: str = "plain", clip_skip: int = 1, lora_dir=None, sampler: str = SamplerSettings.sampler, steps: int = SamplerSettings.steps,
              sigma_schedule: str = SamplerSettings.sigma_schedule, spacing: str | None = None,
              steps_offset: int | None = None, eta: float | None = None, sampler_options: dict | None = None,
              height: int | None = None, width: int | None = None, size: ImageSize | None = None,
              seed: int | None = None, noise_device: str = "cpu", output: str = "pil",
              return_trajectory: bool | str = False, progress: bool = False, non_finite: str = "error",
              memory: MemoryOptions | None = None, strength: float | None = None,
              strength_rule: str = "compvis") -> "Request":
        """The request of a pipeline call's keywords (those of :func:`diffusion_notes.pipeline.txt2img`;
        ``strength`` None: no image to start from). ``height``/``width``: either left out takes the
        model's default; ``size``: an :class:`ImageSize` instead (e.g. an image's)."""
        if sampler_options is not None and not isinstance(sampler_options, dict):
            raise SettingsError("sampler_options", f"sampler_options must be a dict of the sampler's options, got "
                                f"{type(sampler_options).__name__}")
        options = {**({"eta": eta} if eta is not None else {}), **(sampler_options or {})}
        if size is not None and (height is not None or width is not None):
            raise SettingsError("height", f"the {size.from_image or 'size'} sets the size ({size.label}); "
                                "height and width do not apply")
        if size is None:
            size = ImageSize(height, width)
        return cls(Conditioning(prompt, negative_prompt, num_images, guidance_scale, original_size,
                                crops_coords_top_left, target_size, prompt_syntax, clip_skip, lora_dir),
                   SamplerSettings(sampler, steps, sigma_schedule, spacing, steps_offset, options),
                   size, Seed(seed, noise_device), OutputOptions(output, return_trajectory, progress, non_finite),
                   MemoryOptions() if memory is None else _instance("memory", memory, MemoryOptions),
                   None if strength is None else Strength(strength, strength_rule))

    def check_against(self, geometry) -> "Request":
        """Check what depends on the model (a :class:`~diffusion_notes.geometry.ModelGeometry`; what it does
        not know, e.g. before loading a ``.ckpt``, is left for the check after loading): the size rule,
        the steps against the trained timesteps, the memory estimate, and that the strength leaves a
        timestep to noise to. Returns the request with the default size filled in where a side was None.
        Before loading (no default size known) a side left out is checked after loading."""
        request = replace(self, size=self.size.or_default(geometry.default_size))
        if geometry.vae_factor is not None:
            request.size.check_multiple(geometry.vae_factor)
            if geometry.vae_channels is not None and None not in (request.size.height, request.size.width):
                check_fits_in_memory(request.size, self.conditioning.batch, geometry.vae_factor, geometry.device,
                                     geometry.vae_channels, self.memory)
        if geometry.alphas_cumprod is not None:
            grid = self.sampler.grid(geometry.alphas_cumprod)
            if self.strength is not None:
                strength_grids(self, grid, warn=False)
        return request

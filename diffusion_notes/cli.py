"""``python -m diffusion_notes txt2img | img2img | inpaint``: the command line of the pipeline.

Flags keep the names of CompVis's ``scripts/txt2img.py`` / ``scripts/img2img.py`` where those exist
(``--prompt --ckpt --config --plms --ddim_steps --ddim_eta --scale --n_samples --n_iter --H --W --seed
--outdir --precision --from-file --init-img --strength``), and the output layout too: images go to
``outdir/samples/00000.png, 00001.png, ...`` and one grid per run to ``outdir/grid-0000.png``, the
numbers continuing after the highest one present, so no file is ever replaced. Each PNG carries its
generation parameters in AUTOMATIC1111's ``parameters`` text chunk.

Adapters (README "Adapters"): ``--lora FILE[:SCALE]`` and ``--embedding FILE`` (repeatable), ``--lora-dir``
(the folder of ``<lora:name:weight>`` prompt tags, with ``--prompt-syntax a1111``) and ``--vae``; each
file is checked (exists, readable, a LoRA / embedding / VAE by its tensor names) before the model loads.

Differences from CompVis: txt2img's default sampler is PLMS (``--ddim`` for DDIM; img2img and inpaint
default to DDIM), one image per run by default (``--n_samples 1 --n_iter 1``), each batch (one prompt,
one iteration) gets its own seed ``seed + k``, k counting batches, so each PNG's ``Seed`` reproduces it
(``--seed -1`` draws a random one and reports it).

The flags only become the settings objects of :mod:`diffusion_notes.settings`, which do every check;
a :class:`~diffusion_notes.errors.SettingsError` is printed naming the flag (``guidance_scale`` ->
``--scale``), a :class:`~diffusion_notes.errors.CheckpointError` as it is: one line on stderr, exit
status 2, before anything is written (settings, the output folder and image sizes are checked before
the model loads). Any other exception is a bug and keeps its traceback. Ctrl-C stops with exit status
130 and one line saying how many pictures were saved; no partial file is left.

Why it is over 400 lines: the flags (with their ``--help`` texts) and the checks of the command
line's own inputs (files, folders, devices, adapter files), which only a command line has.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import re
import sys
import warnings
from pathlib import Path

import torch

from . import pipeline
from .errors import CheckpointError, SettingsError
from .geometry import ModelGeometry, default_size
from .images import check_image_and_mask, image_to_tensor, make_grid, mask_to_tensor, save_png
from .mini_sd import MODEL_NAME as DEFAULT_MODEL_NAME
from .mini_sd import load_mini_sd, weights_path
from .precision import resolve_dtype
from .samplers import SAMPLERS, SIGMA_SCHEDULES
from .settings import SEED_MAX, ImageSize, MemoryOptions, Request, Seed
from .stable_diffusion import StableDiffusion

__all__ = ["main", "build_parser", "pipeline_defaults", "UsageError", "FLAGS"]

DEFAULT_PROMPT = "a painting of a virus monster playing guitar"  # CompVis's default
OUTDIRS = {"txt2img": "outputs/txt2img-samples", "img2img": "outputs/img2img-samples",
           "inpaint": "outputs/inpainting-samples"}
MEMORY_HINT = ("--slice-vae, --tile-vae, --offload-text-encoder, --precision fp16, "
               "fewer --n_samples or a smaller --H/--W")


class UsageError(SettingsError):
    """A mistake in the command line itself or its input files; ``option`` is the flag."""

    def __init__(self, flag: str, message: str):
        super().__init__(flag, message)


#: The flag of each Python option a SettingsError can name (the rest are named as they are).
FLAGS = {
    "prompt": "--prompt", "negative_prompt": "--negative-prompt", "num_images": "--n_samples",
    "guidance_scale": "--scale", "sampler": "--sampler", "steps": "--ddim_steps", "eta": "--ddim_eta",
    "sigma_schedule": "--schedule", "precision": "--precision",
    "seed": "--seed", "height": "--H", "width": "--W", "strength": "--strength", "strength_rule": "--strength-rule",
    "image": "--init-img", "mask": "--mask", "non_finite": "--allow-non-finite", "noise_device": "--device",
    "model": "--ckpt/--model", "prompt_syntax": "--prompt-syntax", "clip_skip": "--clip-skip",
    "lora_dir": "--lora-dir",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line on stderr (argparse prints the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# --------------------------------------------------------------------------------------------
# the flags
# --------------------------------------------------------------------------------------------


def pipeline_defaults(command: str) -> dict:
    """The defaults of the pipeline keywords that flags stand for, read from ``pipeline.<command>``'s own
    signature where it sets them (the sampler and strength of img2img / inpaint), else from
    ``Request.build``'s: one place for each default."""
    build = inspect.signature(Request.build).parameters
    door = inspect.signature(getattr(pipeline, command)).parameters
    names = ["sampler", "steps", "sigma_schedule", "guidance_scale", "num_images"]
    if command != "txt2img":
        names += ["strength", "strength_rule"]
    return {name: (door[name] if name in door else build[name]).default for name in names}


def build_parser(command: str) -> argparse.ArgumentParser:
    defaults = pipeline_defaults(command)
    p = _Parser(prog=f"python -m diffusion_notes {command}", description=_DESCRIPTIONS[command])
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt to render")
    p.add_argument("--negative-prompt", default="", help="what to steer away from (replaces '' in the guidance)")
    p.add_argument("--from-file", help="a text file with one prompt per line (instead of --prompt)")
    p.add_argument("--prompt-syntax", choices=["plain", "a1111"], default="plain",
                   help="plain (CompVis: brackets are characters, 75 tokens, default) or a1111 (AUTOMATIC1111's "
                        "(word:1.2) emphasis and long prompts in 75-token chunks)")
    p.add_argument("--clip-skip", type=int, default=1,
                   help="AUTOMATIC1111's clip skip: 1 = the text encoder's last layer (default), 2 = the penultimate")

    model = p.add_argument_group("model (one of --ckpt / --model; neither: the shipped 32x32 digits miniature)")
    model.add_argument("--ckpt", help="an original single-file checkpoint (.safetensors or .ckpt)")
    model.add_argument("--config", help="its original inference YAML (v1-inference.yaml, v2-inference-v.yaml, ...)")
    model.add_argument("--model", help="a diffusers folder (with model_index.json) or a Hugging Face hub id")
    model.add_argument("--tokenizer", help="a tokenizer folder or diffusers folder, to load a --ckpt offline")

    _add_adapter_flags(p)

    sampling = p.add_argument_group("sampling")
    sampling.add_argument("--sampler", choices=list(SAMPLERS), metavar="NAME",
                          help=f"the sampler: {', '.join(SAMPLERS)} (default {defaults['sampler']})")
    sampling.add_argument("--schedule", choices=list(SIGMA_SCHEDULES), default=defaults["sigma_schedule"],
                          help="the noise levels visited: the model's own (default), karras (rho = 7) or exponential")
    sampling.add_argument("--plms", action="store_true", help="same as --sampler plms")
    sampling.add_argument("--ddim", action="store_true", help="same as --sampler ddim")
    sampling.add_argument("--ddim_steps", type=int, default=defaults["steps"],
                          help=f"number of sampling steps (default {defaults['steps']})")
    sampling.add_argument("--ddim_eta", type=float, default=None,
                          help="eta of DDIM (default 0: deterministic, 1 DDPM-like) or of an ancestral sampler "
                               "(default 1); 0 is accepted by every sampler (CompVis passes --ddim_eta 0.0 to PLMS)")
    sampling.add_argument("--scale", type=float, default=defaults["guidance_scale"],
                          help=f"unconditional guidance scale (default {defaults['guidance_scale']})")
    sampling.add_argument("--seed", type=int, default=42,
                          help="seed of the noise, 0 to 4294967295 (default 42; -1: a random one, reported)")
    if command == "txt2img":
        sampling.add_argument("--H", type=int, help="image height in pixels (default: the model's, e.g. 512)")
        sampling.add_argument("--W", type=int, help="image width in pixels (default: the model's, e.g. 512)")
    else:
        sampling.add_argument("--init-img", required=True, help="the starting image (its size is the output's)")
        sampling.add_argument("--strength", type=float, default=defaults["strength"],
                              help="0 keeps the image, 1 starts from pure noise")
        sampling.add_argument("--strength-rule", choices=["compvis", "diffusers"],
                              default=defaults["strength_rule"],
                              help="how strength becomes steps (see pipeline.strength_timesteps)")
    if command == "inpaint":
        sampling.add_argument("--mask", required=True, help="white where the image is repainted, black where kept")

    output = p.add_argument_group("output")
    output.add_argument("--n_samples", type=int, default=defaults["num_images"],
                        help=f"images per prompt in one batch (default {defaults['num_images']})")
    output.add_argument("--n_iter", type=int, default=1, help="batches per prompt (default 1)")
    output.add_argument("--outdir", default=OUTDIRS[command], help=f"where to write (default {OUTDIRS[command]})")
    output.add_argument("--step-viewer", action="store_true",
                        help="also write outdir/step-viewer-NNNNN.html per batch (NNNNN: its first sample's number): "
                             "a slider over the steps showing x_t, the predicted image and each update with its numbers "
                             "(decodes one prediction per step: slow for a full-size model on a CPU)")
    output.add_argument("--allow-non-finite", action="store_true",
                        help="save images even when the model produced NaN/inf (with a warning) instead of stopping")

    device = p.add_argument_group("device and memory")
    device.add_argument("--device", default="auto", help="cuda, cuda:1, cpu, or auto (cuda when available)")
    device.add_argument("--precision", default="auto", choices=["auto", "autocast", "full", "fp32", "fp16", "bf16"],
                        help="weights' dtype: auto/autocast = fp16 on CUDA, bf16 on CPUs with native bf16 "
                             "(AMX / AVX-512 BF16), fp32 on other CPUs; full = fp32")
    device.add_argument("--slice-vae", action="store_true", help="decode one image at a time")
    device.add_argument("--tile-vae", action="store_true", help="decode in overlapping tiles (large images)")
    device.add_argument("--offload-text-encoder", action="store_true", help="run the text encoder on the CPU")
    device.add_argument("--upcast-attention", action="store_true", help="attention softmax in fp32 (SD 2.1 in fp16)")
    return p


_DESCRIPTIONS = {
    "txt2img": "Text to image with a Stable Diffusion checkpoint (CompVis scripts/txt2img.py). The default "
               "sampler is PLMS (CompVis's default is DDIM unless --plms is given: pass --ddim for it).",
    "img2img": "Image to image: noise an image part of the way, then denoise it toward the prompt "
               "(CompVis scripts/img2img.py).",
    "inpaint": "Inpainting: repaint the white part of --mask (9-channel inpainting models or mask blending).",
}


# --------------------------------------------------------------------------------------------
# flags -> one Request (every check lives in the settings objects)
# --------------------------------------------------------------------------------------------


def _sampler(args, command: str) -> str:
    chosen = [name for name, flag in (("plms", args.plms), ("ddim", args.ddim)) if flag]
    if args.sampler:
        chosen.append(args.sampler)
    if len(set(chosen)) > 1:
        raise UsageError("--sampler", f"conflicting samplers {sorted(set(chosen))}; give one of --plms, --ddim or "
                         "--sampler")
    return chosen[0] if chosen else pipeline_defaults(command)["sampler"]


def _request(args, command: str, sampler: str, prompt: str, seed: int | None, size: ImageSize | None = None) -> Request:
    """The :class:`~diffusion_notes.settings.Request` the flags stand for, for one prompt and seed (checked
    as it is made). ``size``: the --init-img's, for img2img and inpaint (None until it is read)."""
    keywords = dict(negative_prompt=args.negative_prompt, num_images=args.n_samples, guidance_scale=args.scale,
                    prompt_syntax=args.prompt_syntax, clip_skip=args.clip_skip, lora_dir=args.lora_dir,
                    sampler=sampler, steps=args.ddim_steps, sigma_schedule=args.schedule, eta=args.ddim_eta,
                    seed=seed, progress=True, non_finite="warn" if args.allow_non_finite else "error",
                    return_trajectory=args.step_viewer,
                    memory=MemoryOptions(vae_slicing=args.slice_vae, vae_tiling=args.tile_vae,
                                         upcast_attention=args.upcast_attention,
                                         offload_text_encoder=args.offload_text_encoder))
    if command == "txt2img":
        keywords.update(height=args.H, width=args.W)
    else:
        keywords.update(strength=args.strength, strength_rule=args.strength_rule, size=size)
    return Request.build(prompt, **keywords)


def _check_run(args, prompts: list[str]) -> None:
    """What the flags ask of the whole run (several batches), beyond one request."""
    if args.n_iter < 1:
        raise UsageError("--n_iter", f"--n_iter must be at least 1, got {args.n_iter}")
    if args.seed != -1 and args.seed + args.n_iter * len(prompts) - 1 > SEED_MAX:
        raise SettingsError("seed", f"seed must leave room for one seed per batch (seed + k up to {SEED_MAX}); "
                            f"{args.seed} + {args.n_iter * len(prompts) - 1} is past it")


def _prompts(args) -> list[str]:
    if not args.from_file:
        return [args.prompt]
    path = Path(args.from_file)
    try:
        if path.exists() and not path.is_file():
            raise IsADirectoryError(21, "it is a folder" if path.is_dir() else "not a regular file")
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError("--from-file", f"cannot read the prompt file {path}: {_reason(exc)}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UsageError("--from-file", f"the prompt file {path} has no prompts; write one prompt per line")
    return prompts


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0]


def _images(args, command: str):
    """The --init-img and --mask pictures, read and checked like every API image (images.image_to_tensor)."""
    if command == "txt2img":
        return None, None
    image = image_to_tensor(args.init_img, "image")
    mask = mask_to_tensor(args.mask, "mask") if command == "inpaint" else None
    if mask is not None:
        check_image_and_mask(image, mask)
    return image, mask


def _device(name: str):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device", f"--device {name}: no CUDA GPU is available to PyTorch here; run on the CPU "
                         "with --device cpu (slow: minutes per image)")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError("--device", f"--device {name!r} is not a device; use cuda, cuda:N or cpu") from None
    return device


def _check_model_source(args) -> None:
    if args.ckpt and args.model:  # neither: the shipped miniature (mini-sd)
        raise UsageError("--ckpt", "give one model: --ckpt path/to/model.safetensors or --model "
                         "path/to/diffusers-folder, not both")
    if args.ckpt:
        path = Path(args.ckpt)
        if path.is_dir():
            hint = "a diffusers folder: use --model" if (path / "model_index.json").is_file() else \
                "use --model for a diffusers folder (with model_index.json), --ckpt for one file"
            raise UsageError("--ckpt", f"--ckpt {args.ckpt} is a folder, not a checkpoint file; {hint}")
        if not path.exists():
            raise UsageError("--ckpt", f"--ckpt {args.ckpt}: no such checkpoint file")
        if not path.is_file():
            raise UsageError("--ckpt", f"--ckpt {args.ckpt} is not a regular file (a pipe or a device?); "
                             "give a .safetensors or .ckpt file")
    if args.model and Path(args.model).is_file():
        raise UsageError("--model", f"--model {args.model} is a file; --model takes a diffusers folder, use --ckpt "
                         "for a single-file checkpoint")
    if args.config and not args.ckpt:
        raise UsageError("--config", "--config describes a --ckpt single file; a --model folder carries its own "
                         "configuration")
    if args.config and not Path(args.config).is_file():
        raise UsageError("--config", f"--config {args.config}: no such YAML file")
    if args.tokenizer and not Path(args.tokenizer).is_dir():
        raise UsageError("--tokenizer", f"--tokenizer {args.tokenizer}: no such folder (give a tokenizer or "
                         "diffusers model folder)")


def _check_outdir(outdir: Path) -> None:
    """The output folders can be created and written, checked before the (slow) model load."""
    for folder in (outdir, outdir / "samples"):
        if folder.exists() and not folder.is_dir():
            raise UsageError("--outdir", f"--outdir {outdir}: {folder} is a file, not a folder; choose another --outdir")
    existing = outdir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError("--outdir", f"--outdir {outdir} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError("--outdir", f"--outdir {outdir}: {existing} is not writable; choose another --outdir")


# --------------------------------------------------------------------------------------------
# adapters: --lora, --lora-dir, --embedding, --vae (diffusion_notes/adapters/, checkpoints/vae_file.py)
# --------------------------------------------------------------------------------------------


def _add_adapter_flags(p: argparse.ArgumentParser) -> None:
    adapters = p.add_argument_group("adapters (checked before the model loads; README \"Adapters\")")
    adapters.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                          help="merge a LoRA file (kohya, PEFT/diffusers, LyCORIS LoHa/LoKr) with multiplier SCALE "
                               "(default 1); repeat for several")
    adapters.add_argument("--lora-dir", metavar="DIR",
                          help="the folder where <lora:name:weight> prompt tags find name.safetensors/.pt/.ckpt "
                               "(with --prompt-syntax a1111)")
    adapters.add_argument("--embedding", action="append", default=[], metavar="FILE",
                          help="a textual-inversion embedding (A1111 .pt/.safetensors, diffusers learned_embeds); "
                               "its word: the token a diffusers file names, else the file name without extension; "
                               "repeat for several")
    adapters.add_argument("--vae", metavar="FILE_OR_FOLDER",
                          help="decode with this VAE instead of the checkpoint's: a .safetensors/.ckpt in CompVis "
                               "layout or a diffusers vae folder of the same family")


def _lora_spec(spec: str) -> tuple[Path, float]:
    """``FILE[:SCALE]`` -> (file, scale): a last ``:``-part that reads as a number is the scale."""
    head, sep, tail = spec.rpartition(":")
    scale = 1.0
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            head = spec  # a ':' inside the path
        else:
            if not math.isfinite(scale):
                raise UsageError("--lora", f"--lora {spec}: the scale {tail!r} is not a finite number; "
                                 "write FILE:0.8")
    return Path(head if sep and head else spec), scale


def _check_file(flag: str, spec: str, path: Path) -> None:
    if not path.exists():
        raise UsageError(flag, f"{flag} {spec}: no such file")
    if not path.is_file():
        raise UsageError(flag, f"{flag} {spec}: not a file" + (" (a folder)" if path.is_dir() else ""))
    if not os.access(path, os.R_OK):
        raise UsageError(flag, f"{flag} {spec}: the file cannot be read (permissions)")


def _check_adapters(args) -> list[tuple[Path, float]]:
    """Every adapter flag's file checked without the model: exists, readable, and a LoRA / embedding /
    VAE by its tensor names. Returns the ``--lora`` (file, scale) pairs."""
    from .adapters.lora_keys import check_lora_keys
    from .adapters.textual_inversion import check_embedding_file
    from .checkpoints.io import load_state_dict
    from .checkpoints.safetensors_header import read_safetensors_header, starts_like_safetensors
    from .checkpoints.vae_file import check_vae_source

    loras = []
    for spec in args.lora:
        path, scale = _lora_spec(spec)
        _check_file("--lora", spec, path)
        try:
            with open(path, "rb") as f:
                safetensors = starts_like_safetensors(f.read(16))
            check_lora_keys(read_safetensors_header(path).tensors if safetensors else load_state_dict(path))
        except CheckpointError as err:
            raise UsageError("--lora", f"--lora {spec}: {_one_line(err)}") from None
        loras.append((path, scale))
    for spec in args.embedding:
        _check_file("--embedding", spec, Path(spec))
        try:
            check_embedding_file(spec)
        except CheckpointError as err:
            raise UsageError("--embedding", f"--embedding {spec}: {_one_line(err)}") from None
    if args.vae:
        try:
            check_vae_source(args.vae)
        except CheckpointError as err:
            raise UsageError("--vae", f"--vae {args.vae}: {_one_line(err)}") from None
    return loras


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _apply_adapters(sd, args, loras: list[tuple[Path, float]]):
    """The loaded model with the VAE swapped (a new object) and the LoRAs and embeddings added; a file
    the model refuses is reported under its flag."""
    from .checkpoints.vae_file import load_vae

    if args.vae:
        try:
            sd = sd.with_vae(load_vae(args.vae, torch_dtype=sd.dtype, device=sd.device))
        except CheckpointError as err:
            raise CheckpointError(f"--vae {args.vae}: {_one_line(err)}") from None
    for (path, scale), spec in zip(loras, args.lora):
        try:
            sd.load_lora(path, scale=scale)
        except CheckpointError as err:
            raise CheckpointError(f"--lora {spec}: {_one_line(err)}") from None
    for spec in args.embedding:
        try:
            sd.load_textual_inversion(spec)
        except CheckpointError as err:
            raise CheckpointError(f"--embedding {spec}: {_one_line(err)}") from None
    return sd


# --------------------------------------------------------------------------------------------
# loading, generating, writing
# --------------------------------------------------------------------------------------------


def _model_source(args) -> str:
    """The checkpoint file or diffusers folder, or the shipped miniature's single file (mini-sd)."""
    return args.ckpt or args.model or str(weights_path())


def _load(args, device, dtype):
    if args.ckpt:
        return StableDiffusion.from_single_file(args.ckpt, config=args.config, tokenizer=args.tokenizer,
                                                torch_dtype=dtype, device=device)
    if args.model:
        return StableDiffusion.from_pretrained(args.model, torch_dtype=dtype, device=device)
    # --- mini-sd: neither --ckpt nor --model: the miniature shipped with the package (mini_sd/MODEL_CARD.md).
    # On the CPU it runs fastest in fp32 on one thread (measured on the 2-core reference machine: bf16 13x
    # slower for convolutions this small, two OpenMP threads several times slower than one under load).
    if device.type == "cpu":
        torch.set_num_threads(1)
        if args.precision == "auto":
            dtype = torch.float32
    return load_mini_sd(torch_dtype=dtype, device=device)


#: How each command starts its runs (:mod:`diffusion_notes.pipeline`'s ``begin`` functions).
_BEGIN = {"txt2img": lambda image, mask: pipeline.begin_from_noise,
          "img2img": lambda image, mask: pipeline.begin_from_image(image),
          "inpaint": lambda image, mask: pipeline.begin_inpainting(image, mask)}


def _generate(sd, command: str, request: Request, image, mask):
    return pipeline.generate(sd, request, _BEGIN[command](image, mask))


def _next_number(folder: Path, pattern: str) -> int:
    """One past the highest number among the files matching ``pattern`` (a regex with one group)."""
    if not folder.is_dir():
        return 0
    numbers = [int(m.group(1)) for f in folder.iterdir() if (m := re.fullmatch(pattern, f.name))]
    return max(numbers, default=-1) + 1


def _model_name(args) -> str:
    if not (args.ckpt or args.model):  # mini-sd: the shipped default
        return DEFAULT_MODEL_NAME
    return Path(args.ckpt).stem if args.ckpt else Path(args.model.rstrip("/")).name


class _Progress:
    """How many pictures a run has saved, and where: what an interrupted run reports."""

    def __init__(self, samples: Path):
        self.samples, self.saved = samples, 0


def _run(command: str, args, progress: _Progress) -> int:
    sampler = _sampler(args, command)
    prompts = _prompts(args)
    _request(args, command, sampler, prompts[0], args.seed)  # made = checked: every check that needs no model
    _check_run(args, prompts)
    _check_model_source(args)
    loras = _check_adapters(args)
    _check_outdir(Path(args.outdir))
    image, mask = _images(args, command)
    size = None if image is None else ImageSize(*image.shape[-2:], from_image="image")
    device = _device(args.device)
    # the size rule and the memory estimate from the file's header, before the (slow) load
    _request(args, command, sampler, prompts[0], None, size).check_against(
        ModelGeometry.of_file(_model_source(args), device))
    sd = _apply_adapters(_load(args, device, resolve_dtype(args.precision, device)), args, loras)
    # the same check generate() makes, here before the notes below: a refused setting prints nothing else
    _request(args, command, sampler, prompts[0], None, size).check_against(ModelGeometry.of_model(sd))
    if command != "inpaint":
        pipeline.refuse_inpainting_model(sd, command)
    if not (args.ckpt or args.model):  # mini-sd: say which model the default is
        print(f"using the shipped miniature {_model_name(args)} (32x32 handwritten digits, prompts such as "
              "\"a handwritten seven\"); give --ckpt or --model for a real Stable Diffusion", file=sys.stderr)
    if device.type == "cpu" and max(default_size(sd)) >= 256:
        print("note: running on the CPU, which is slow: expect minutes per 512x512 image", file=sys.stderr)

    outdir, samples, model = Path(args.outdir), progress.samples, _model_name(args)
    vae = Path(args.vae.rstrip("/")).name if args.vae else None  # AUTOMATIC1111's "VAE: file name"
    first_seed = Seed(-1).resolve() if args.seed == -1 else args.seed
    if args.seed == -1:
        print(f"note: --seed -1: using the random seed {first_seed}", file=sys.stderr)
    pictures, rows, grid_infotext = [], 0, None
    for _ in range(args.n_iter):
        for prompt in prompts:
            seed = first_seed + rows  # one seed per batch, recorded in each PNG
            result = _generate(sd, command, _request(args, command, sampler, prompt, seed, size), image, mask)
            samples.mkdir(parents=True, exist_ok=True)
            first = _next_number(samples, r"(\d{5})\.png")
            for index, picture in enumerate(result.images):
                save_png(picture, samples / f"{first + index:05}.png", result.infotext(index, model=model, vae=vae))
                progress.saved += 1
            if args.step_viewer:
                _write_step_viewer(sd, outdir, result, first)
            pictures += result.images
            grid_infotext = grid_infotext or result.infotext(0, model=model, vae=vae)
            rows += 1
    _write_grid(outdir, pictures, rows, grid_infotext)
    print(f"wrote {len(pictures)} image(s) to {samples} and a grid to {outdir}", file=sys.stderr)
    return 0


def _write_step_viewer(sd, outdir: Path, result, first: int) -> None:
    """``--step-viewer``: the batch's steps as one offline HTML page, numbered after its first sample (or after
    the highest viewer present, so that none is replaced)."""
    from .step_viewer import StepViewer

    if not result.trajectory.pred_x0:
        print("note: --step-viewer: the run took no steps (strength 0), so no viewer was written", file=sys.stderr)
        return
    number = max(first, _next_number(outdir, r"step-viewer-(\d{5})\.html"))
    names = ", ".join(f"samples/{first + k:05}.png" for k in range(len(result.latents)))
    StepViewer.from_generation(sd, result, subtitle=f"the run of {names}").save(outdir / f"step-viewer-{number:05}.html")


def _write_grid(outdir: Path, pictures: list, rows: int, infotext: str) -> None:
    """One grid per run, a row per batch (CompVis: ``make_grid(..., nrow=n_samples)``)."""
    number = _next_number(outdir, r"grid-(\d{4})\.png")
    save_png(make_grid(pictures, rows), outdir / f"grid-{number:04}.png", infotext)


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def _one_line_warnings(message, category, filename, lineno, line=None) -> str:
    return f"warning: {' '.join(str(message).split())}\n"


def flag_message(err: SettingsError) -> str:
    """The error's message with its Python option replaced by the command line's flag."""
    message = " ".join(str(err).split())
    flag = FLAGS.get(err.option, err.option)
    if err.option.startswith("--") or flag == err.option:
        return message
    if message.startswith(err.option):
        return flag + message[len(err.option):]
    return f"{flag}: {message}"


def main(argv: list[str]) -> int:
    """``argv[0]`` is the command (txt2img, img2img, inpaint), the rest its flags. Returns the exit status."""
    command, rest = argv[0], list(argv[1:])
    if command not in OUTDIRS:
        print(f"error: unknown command {command!r}; use one of {', '.join(OUTDIRS)}", file=sys.stderr)
        return 2
    try:
        args = build_parser(command).parse_args(rest)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code
    previous_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warnings
    progress = _Progress(Path(args.outdir) / "samples")
    try:
        return _run(command, args, progress)
    except SettingsError as exc:
        print(f"error: {flag_message(exc)}", file=sys.stderr)
    except CheckpointError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
    except torch.cuda.OutOfMemoryError:
        print(f"error: out of GPU memory; reduce what the GPU holds with {MEMORY_HINT}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"interrupted: {progress.saved} image(s) saved" + (f" to {progress.samples}" if progress.saved else "")
              + "; no partial file was left", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous_format
    return 2

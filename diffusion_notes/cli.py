"""``python -m diffusion_notes txt2img | img2img | inpaint``: the command line of the pipeline.

Flags keep the names of CompVis's ``scripts/txt2img.py`` / ``scripts/img2img.py`` where those exist
(``--prompt --ckpt --config --plms --ddim_steps --ddim_eta --scale --n_samples --n_iter --H --W --seed
--outdir --precision --from-file --init-img --strength``), and the output layout too: images go to
``outdir/samples/00000.png, 00001.png, ...`` and one grid per run to ``outdir/grid-0000.png``, the
numbers continuing after the highest one present, so no file is ever replaced. Each PNG carries its
generation parameters in AUTOMATIC1111's ``parameters`` text chunk.

Differences from CompVis: txt2img's default sampler is PLMS (``--ddim`` for DDIM; img2img and inpaint
default to DDIM), one image per run by default (``--n_samples 1 --n_iter 1``), each batch (one prompt,
one iteration) gets its own seed ``seed + k``, k counting batches, so each PNG's ``Seed`` reproduces it, and a mistake the user can fix ends the run with exit status 2 and one
line on stderr before anything is written.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path

__all__ = ["main", "build_parser", "UsageError"]

DEFAULT_PROMPT = "a painting of a virus monster playing guitar"  # CompVis's default
OUTDIRS = {"txt2img": "outputs/txt2img-samples", "img2img": "outputs/img2img-samples",
           "inpaint": "outputs/inpainting-samples"}
MEMORY_HINT = ("--slice-vae, --tile-vae, --offload-text-encoder, --precision fp16, "
               "fewer --n_samples or a smaller --H/--W")


class UsageError(Exception):
    """A mistake in the command line or its input files; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line on stderr (argparse prints the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# --------------------------------------------------------------------------------------------
# the flags
# --------------------------------------------------------------------------------------------


def build_parser(command: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"python -m diffusion_notes {command}", description=_DESCRIPTIONS[command])
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt to render")
    p.add_argument("--negative-prompt", default="", help="what to steer away from (replaces '' in the guidance)")
    p.add_argument("--from-file", help="a text file with one prompt per line (instead of --prompt)")

    model = p.add_argument_group("model (one of --ckpt / --model; neither: the shipped 32x32 digits miniature)")
    model.add_argument("--ckpt", help="an original single-file checkpoint (.safetensors or .ckpt)")
    model.add_argument("--config", help="its original inference YAML (v1-inference.yaml, v2-inference-v.yaml, ...)")
    model.add_argument("--model", help="a diffusers folder (with model_index.json) or a Hugging Face hub id")
    model.add_argument("--tokenizer", help="a tokenizer folder or diffusers folder, to load a --ckpt offline")

    sampling = p.add_argument_group("sampling")
    from .samplers import SAMPLERS, SIGMA_SCHEDULES

    sampling.add_argument("--sampler", choices=list(SAMPLERS), metavar="NAME",
                          help=f"the sampler: {', '.join(SAMPLERS)} (default plms"
                          + (", ddim for img2img/inpaint)" if command != "txt2img" else ")"))
    sampling.add_argument("--schedule", choices=list(SIGMA_SCHEDULES), default="default",
                          help="the noise levels visited: the model's own (default), karras (rho = 7) or exponential")
    sampling.add_argument("--plms", action="store_true", help="same as --sampler plms")
    sampling.add_argument("--ddim", action="store_true", help="same as --sampler ddim")
    sampling.add_argument("--ddim_steps", type=int, default=50, help="number of sampling steps (default 50)")
    sampling.add_argument("--ddim_eta", type=float, default=None,
                          help="eta of DDIM (default 0: deterministic, 1 DDPM-like) or of an ancestral sampler (default 1)")
    sampling.add_argument("--scale", type=float, default=7.5, help="unconditional guidance scale (default 7.5)")
    sampling.add_argument("--seed", type=int, default=42, help="seed of the noise (default 42)")
    if command == "txt2img":
        sampling.add_argument("--H", type=int, help="image height in pixels (default: the model's, e.g. 512)")
        sampling.add_argument("--W", type=int, help="image width in pixels (default: the model's, e.g. 512)")
    else:
        sampling.add_argument("--init-img", required=True, help="the starting image (its size is the output's)")
        sampling.add_argument("--strength", type=float, default=0.75 if command == "img2img" else 1.0,
                              help="0 keeps the image, 1 starts from pure noise")
        sampling.add_argument("--strength-rule", choices=["compvis", "diffusers"],
                              default="compvis" if command == "img2img" else "diffusers",
                              help="how strength becomes steps (see pipeline.strength_timesteps)")
    if command == "inpaint":
        sampling.add_argument("--mask", required=True, help="white where the image is repainted, black where kept")

    output = p.add_argument_group("output")
    output.add_argument("--n_samples", type=int, default=1, help="images per prompt in one batch (default 1)")
    output.add_argument("--n_iter", type=int, default=1, help="batches per prompt (default 1)")
    output.add_argument("--outdir", default=OUTDIRS[command], help=f"where to write (default {OUTDIRS[command]})")

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
    "txt2img": "Text to image with a Stable Diffusion checkpoint (CompVis scripts/txt2img.py).",
    "img2img": "Image to image: noise an image part of the way, then denoise it toward the prompt "
               "(CompVis scripts/img2img.py).",
    "inpaint": "Inpainting: repaint the white part of --mask (9-channel inpainting models or mask blending).",
}


# --------------------------------------------------------------------------------------------
# checks that need no model
# --------------------------------------------------------------------------------------------


def _sampler(args, command: str) -> str:
    chosen = [name for name, flag in (("plms", args.plms), ("ddim", args.ddim)) if flag]
    if args.sampler:
        chosen.append(args.sampler)
    if len(set(chosen)) > 1:
        raise UsageError(f"conflicting samplers {sorted(set(chosen))}; give one of --plms, --ddim or --sampler")
    return chosen[0] if chosen else ("plms" if command == "txt2img" else "ddim")


def _check_numbers(args, command: str, sampler: str) -> None:
    if args.ddim_steps <= 0:
        raise UsageError(f"--ddim_steps must be a positive number of steps, got {args.ddim_steps}")
    from .samplers import SAMPLERS

    if args.ddim_eta is not None and args.ddim_eta < 0:
        raise UsageError(f"--ddim_eta must be >= 0 (0 = deterministic DDIM), got {args.ddim_eta}")
    if args.ddim_eta is not None and "eta" not in SAMPLERS[sampler].options:
        others = [name for name, spec in SAMPLERS.items() if "eta" in spec.options and name != "ddim"]
        also = f" (and to {', '.join(others)})" if others else ""
        raise UsageError(f"--ddim_eta applies to the DDIM sampler only{also}; add --ddim, or drop --ddim_eta for {sampler}")
    if args.scale < 0:
        raise UsageError(f"--scale (guidance scale) must be >= 0 (1 = no guidance, 7.5 usual), got {args.scale}")
    if args.n_samples < 1 or args.n_iter < 1:
        raise UsageError(f"--n_samples and --n_iter must be at least 1, got {args.n_samples} and {args.n_iter}")
    if command == "txt2img":
        for flag, value in (("--H", args.H), ("--W", args.W)):
            if value is not None and (value <= 0 or value % 8):
                raise UsageError(f"{flag} {value} is not a positive multiple of 8 (the VAE works on 8x8 pixel "
                                 f"blocks); use {max(8, round(value / 8) * 8)}")
    elif not 0 <= args.strength <= 1:
        raise UsageError(f"--strength must be between 0 (keep the image) and 1 (pure noise), got {args.strength}")


def _prompts(args) -> list[str]:
    if not args.from_file:
        return [args.prompt]
    path = Path(args.from_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the prompt file {path}: {_reason(exc)}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UsageError(f"the prompt file {path} has no prompts; write one prompt per line")
    return prompts


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0]


def _open_image(path_text: str, what: str):
    from PIL import Image

    path = Path(path_text)
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError) as exc:  # missing file, not an image, truncated file
        raise UsageError(f"cannot read {what} {path}: {_reason(exc)}") from None


def _images(args, command: str):
    if command == "txt2img":
        return None, None
    image = _open_image(args.init_img, "the --init-img image")
    mask = _open_image(args.mask, "the --mask image") if command == "inpaint" else None
    if mask is not None and mask.size != image.size:
        raise UsageError(f"--init-img is {image.size[0]}x{image.size[1]} but --mask is {mask.size[0]}x{mask.size[1]}; "
                         "they must be the same size")
    return image, mask


def _device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available to PyTorch here; run on the CPU with "
                         "--device cpu (slow: minutes per image)")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use cuda, cuda:N or cpu") from None
    return device


def _dtype(precision: str, device):
    from .precision import resolve_dtype

    return resolve_dtype(precision, device)


def _check_model_source(args) -> None:
    if args.ckpt and args.model:
        raise UsageError("give one model: --ckpt path/to/model.safetensors or --model path/to/diffusers-folder, not both")
    if args.ckpt and not Path(args.ckpt).is_file():
        raise UsageError(f"--ckpt {args.ckpt}: no such checkpoint file")
    if args.config and not args.ckpt:
        raise UsageError("--config describes a --ckpt single file; a --model folder carries its own configuration")
    if args.config and not Path(args.config).is_file():
        raise UsageError(f"--config {args.config}: no such YAML file")
    if args.tokenizer and not Path(args.tokenizer).is_dir():
        raise UsageError(f"--tokenizer {args.tokenizer}: no such folder (give a tokenizer or diffusers model folder)")


# --------------------------------------------------------------------------------------------
# loading, generating, writing
# --------------------------------------------------------------------------------------------


def _load(args, device, dtype):
    from .stable_diffusion import StableDiffusion

    if args.ckpt:
        return StableDiffusion.from_single_file(args.ckpt, config=args.config, tokenizer=args.tokenizer,
                                                torch_dtype=dtype, device=device)
    if args.model:
        return StableDiffusion.from_pretrained(args.model, torch_dtype=dtype, device=device)
    # --- mini-sd: neither --ckpt nor --model: the miniature shipped with the package (mini_sd/MODEL_CARD.md)
    from .mini_sd import load_mini_sd

    return load_mini_sd(torch_dtype=dtype, device=device)


def _generate(sd, command: str, args, sampler: str, prompt: str, seed: int, image, mask):
    from . import pipeline

    memory = pipeline.MemoryOptions(vae_slicing=args.slice_vae, vae_tiling=args.tile_vae,
                                    upcast_attention=args.upcast_attention,
                                    offload_text_encoder=args.offload_text_encoder)
    common = dict(negative_prompt=args.negative_prompt, steps=args.ddim_steps, sampler=sampler,
                  sigma_schedule=args.schedule,
                  guidance_scale=args.scale, eta=args.ddim_eta, num_images=args.n_samples, seed=seed,
                  memory=memory, progress=True)
    if command == "txt2img":
        return pipeline.txt2img(sd, prompt, height=args.H, width=args.W, **common)
    if command == "img2img":
        return pipeline.img2img(sd, image, prompt, strength=args.strength, strength_rule=args.strength_rule, **common)
    return pipeline.inpaint(sd, image, mask, prompt, strength=args.strength, strength_rule=args.strength_rule, **common)


def _check_against_model(sd, args, command: str, sampler: str, image) -> None:
    """The checks that need the model, run before the first (slow) step so that nothing is written."""
    from . import pipeline
    from .sampling import SamplerSettings

    grid = SamplerSettings(sampler, args.ddim_steps, args.schedule).grid(sd.schedule)  # SettingsError if impossible
    timesteps = grid.timesteps[:-1].flip(0).numpy()
    if command != "inpaint" and pipeline.is_inpainting_model(sd):
        raise UsageError(f"{_model_name(args)} is an inpainting checkpoint (9-channel UNet); use it with the inpaint "
                         f"command, or give {command} an ordinary checkpoint")
    if command != "txt2img":
        try:
            pipeline.strength_timesteps(timesteps, args.ddim_steps, args.strength, args.strength_rule)
        except ValueError as err:  # the library's message names the Python argument; name the flag here
            raise UsageError(f"{err} (on the command line: --strength-rule diffusers)") from None
    height, width = (args.H, args.W) if command == "txt2img" else (image.size[1], image.size[0])
    default_h, default_w = pipeline.default_size(sd)
    pipeline.check_size(sd, height or default_h, width or default_w,
                         "--H and --W" if command == "txt2img" else "the --init-img's height and width")


def _next_number(folder: Path, pattern: str) -> int:
    """One past the highest number among the files matching ``pattern`` (a regex with one group)."""
    if not folder.is_dir():
        return 0
    numbers = [int(m.group(1)) for f in folder.iterdir() if (m := re.fullmatch(pattern, f.name))]
    return max(numbers, default=-1) + 1


def _model_name(args) -> str:
    if not (args.ckpt or args.model):  # mini-sd: the shipped default
        from .mini_sd import MODEL_NAME

        return MODEL_NAME
    return Path(args.ckpt).stem if args.ckpt else Path(args.model.rstrip("/")).name


def _run(command: str, args) -> int:
    sampler = _sampler(args, command)
    _check_numbers(args, command, sampler)
    prompts = _prompts(args)
    image, mask = _images(args, command)
    _check_model_source(args)
    if Path(args.outdir).exists() and not Path(args.outdir).is_dir():
        raise UsageError(f"--outdir {args.outdir} is a file, not a folder; choose another --outdir")
    device = _device(args.device)
    sd = _load(args, device, _dtype(args.precision, device))
    _check_against_model(sd, args, command, sampler, image)
    if not (args.ckpt or args.model):  # mini-sd: say which model the default is
        print(f"using the shipped miniature {_model_name(args)} (32x32 handwritten digits, prompts such as "
              "\"a handwritten seven\"); give --ckpt or --model for a real Stable Diffusion", file=sys.stderr)
    from .pipeline import default_size

    if device.type == "cpu" and max(default_size(sd)) >= 256:
        print("note: running on the CPU, which is slow: expect minutes per 512x512 image", file=sys.stderr)

    outdir, samples, model = Path(args.outdir), Path(args.outdir) / "samples", _model_name(args)
    pictures, rows, grid_infotext = [], 0, None
    for _ in range(args.n_iter):
        for prompt in prompts:
            seed = args.seed + rows  # one seed per batch, recorded in each PNG
            result = _generate(sd, command, args, sampler, prompt, seed, image, mask)
            samples.mkdir(parents=True, exist_ok=True)
            first = _next_number(samples, r"(\d{5})\.png")
            for index, picture in enumerate(result.images):
                _save(picture, samples / f"{first + index:05}.png", result.infotext(index, model=model))
            pictures += result.images
            grid_infotext = grid_infotext or result.infotext(0, model=model)
            rows += 1
    _write_grid(outdir, pictures, rows, grid_infotext)
    print(f"wrote {len(pictures)} image(s) to {samples} and a grid to {outdir}", file=sys.stderr)
    return 0


def _save(picture, path: Path, infotext: str) -> None:
    from .images import save_png

    save_png(picture, path, infotext)


def _write_grid(outdir: Path, pictures: list, rows: int, infotext: str) -> None:
    """One grid per run, a row per batch (CompVis: ``make_grid(..., nrow=n_samples)``)."""
    from .images import make_grid

    number = _next_number(outdir, r"grid-(\d{4})\.png")
    _save(make_grid(pictures, rows), outdir / f"grid-{number:04}.png", infotext)


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def _one_line_warnings(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


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
    import torch

    from .checkpoints.io import CheckpointError

    previous_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warnings
    try:
        return _run(command, args)
    except (UsageError, CheckpointError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
    except torch.cuda.OutOfMemoryError:
        print(f"error: out of GPU memory; reduce what the GPU holds with {MEMORY_HINT}", file=sys.stderr)
    finally:
        warnings.formatwarning = previous_format
    return 2

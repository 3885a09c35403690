"""The LCM-LoRA shipped for notebook 19 (``diffusion_notes/mini_sd/adapters/lcm_lora.safetensors``, made by
``scripts/distill_lcm_lora.py``): a kohya file that diffusers fuses as we merge it, that ``--lora`` loads on the
command line with the picture of the Python API, and that turns the miniature into a few-step model: with the LCM
sampler at 2 steps it beats the teacher's best 2-step sampler with guidance, by the judge and by FD-digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_notes import cli
from diffusion_notes.adapters import detect_lora_format
from diffusion_notes.images import parse_parameters
from diffusion_notes.mini_sd import judge, load_mini_sd, weights_path
from diffusion_notes.mini_sd.data import caption

ROOT = Path(__file__).resolve().parents[1]
LCM_LORA = weights_path().parent.parent / "adapters" / "lcm_lora.safetensors"
TABLE = ROOT / "notebooks" / "data" / "lcm_lora_mini_sd.json"


def test_file_is_a_small_kohya_lora_with_its_training_record():
    from safetensors import safe_open

    with safe_open(str(LCM_LORA), "pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
    assert detect_lora_format(keys) == "kohya" and all(k.startswith("lora_unet_") for k in keys)
    assert LCM_LORA.stat().st_size < 1_000_000
    assert int(metadata["diffusion_notes.cpu_seconds"]) <= 15 * 60  # the brief's budget: 15 CPU minutes, one thread
    assert json.loads(TABLE.read_text())["training"]["command"] == metadata["diffusion_notes.command"]


def test_cli_lora_flag_gives_the_picture_of_the_python_api(tmp_path):
    args = ["txt2img", "--prompt", "a handwritten seven", "--outdir", str(tmp_path), "--lora", str(LCM_LORA),
            "--sampler", "lcm", "--ddim_steps", "2", "--scale", "1", "--seed", "3", "--device", "cpu", "--precision", "fp32"]
    assert cli.main(args) == 0
    with Image.open(tmp_path / "samples" / "00000.png") as image:
        picture, params = np.asarray(image.convert("RGB")), parse_parameters(image.text["parameters"])
    sd = load_mini_sd(torch_dtype=torch.float32)
    sd.load_lora(LCM_LORA)
    expected = sd.txt2img("a handwritten seven", steps=2, sampler="lcm", guidance_scale=1.0, seed=3)
    assert np.array_equal(picture, np.asarray(expected.images[0]))
    assert params["Lora hashes"].startswith("lcm_lora: ")


def test_two_lcm_steps_with_the_lora_beat_the_teachers_two_steps():
    """2 steps of the LCM sampler with the LoRA (no guidance pass) against 2 steps of the teacher's DPM++ 2M with its
    default guidance 7.5: the judge reads more of the asked digits and FD-digits (quality.features) is lower."""
    from diffusion_notes.quality import features

    sd = load_mini_sd(torch_dtype=torch.float32)
    prompts = [caption(digit, 0) for digit in range(10)]

    def measured(sampler, guidance):
        arrays = sd.txt2img(prompts, steps=2, sampler=sampler, guidance_scale=guidance, num_images=20, seed=11,
                            output="array").arrays
        agreement = float((judge.predicted_digits(arrays) == np.repeat(np.arange(10), 20)).mean())
        return agreement, features.fd_digits(arrays, size=32)

    teacher = measured("dpmpp_2m", 7.5)
    sd.load_lora(LCM_LORA)
    with_lora = measured("lcm", 1.0)
    assert with_lora[0] >= 0.95 and with_lora[0] > teacher[0] and with_lora[1] < 0.5 * teacher[1], (with_lora, teacher)


def test_diffusers_fuse_lora_equals_our_merge(tmp_path):
    pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline

    from diffusion_notes.stable_diffusion import StableDiffusion

    folder = tmp_path / "diffusers"
    load_mini_sd(torch_dtype=torch.float32).save_pretrained(folder)
    ours = StableDiffusion.from_pretrained(folder, torch_dtype=torch.float32)
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    ours.load_lora(LCM_LORA)
    pipe.load_lora_weights(str(LCM_LORA))
    pipe.fuse_lora()
    g = torch.Generator().manual_seed(0)
    x, context, t = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 77, 64, generator=g), torch.tensor([19, 999])
    with torch.no_grad():
        mine, theirs = ours.unet(x, t, context), pipe.unet(x, t, encoder_hidden_states=context).sample
    assert (mine - theirs).abs().max() / theirs.abs().max() < 1e-5

"""AUTOMATIC1111's prompt syntax and clip skip through txt2img and the command line (the encodings
themselves are checked against transformers and diffusers in tests/adapters/test_long_prompts.py)."""

from __future__ import annotations

import warnings

import pytest
import torch

from diffusion_notes import cli
from diffusion_notes.images import parse_parameters
from diffusion_notes.pipeline import txt2img
from diffusion_notes.prompts import PromptTruncatedWarning

from .helpers import SIZE, make_x_T

FAST = dict(steps=4, sampler="ddim", height=SIZE, width=SIZE, output="array")


def test_a1111_syntax_without_brackets_or_length_is_the_plain_reading(ours):
    sd = ours("sd1")
    plain = txt2img(sd, "the cat", latents=make_x_T(), **FAST)
    a1111 = txt2img(sd, "the cat", latents=make_x_T(), prompt_syntax="a1111", **FAST)
    assert torch.equal(plain.latents, a1111.latents)
    literal = txt2img(sd, "the (cat)", latents=make_x_T(), **FAST)  # plain: brackets are characters
    assert not torch.equal(plain.latents, literal.latents)


def test_a_long_prompt_reaches_the_unet_whole_in_a1111_syntax(ours):
    """Plain: cut at 75 tokens with a warning; a1111: 77-token chunks, prompt and negative prompt alike."""
    sd = ours("sd1")
    long_prompt = "the cat " * 60  # 120 tokens
    seen = []
    handle = sd.unet.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[2].shape)))
    try:
        with pytest.warns(PromptTruncatedWarning):
            txt2img(sd, long_prompt, latents=make_x_T(), **FAST)
        plain_shapes, seen[:] = set(seen), []
        with warnings.catch_warnings():
            warnings.simplefilter("error", PromptTruncatedWarning)
            txt2img(sd, long_prompt, negative_prompt="blurry", latents=make_x_T(), prompt_syntax="a1111", **FAST)
    finally:
        handle.remove()
    assert {s[1] for s in plain_shapes} == {77} and {s[1] for s in seen} == {154}


def test_clip_skip_changes_the_picture_and_is_written_to_the_png(ours, tiny, tmp_path):
    sd = ours("sd1")
    last = txt2img(sd, "the cat", latents=make_x_T(), **FAST)
    second = txt2img(sd, "the cat", latents=make_x_T(), clip_skip=2, **FAST)
    assert not torch.equal(last.latents, second.latents)
    assert "Clip skip: 2" in second.infotext() and "Clip skip" not in last.infotext()
    argv = ["txt2img", "--model", str(tiny("sd1")[0]), "--outdir", str(tmp_path), "--ddim_steps", "2", "--device",
            "cpu", "--H", str(SIZE), "--W", str(SIZE), "--clip-skip", "2", "--prompt-syntax", "a1111"]
    assert cli.main(argv) == 0
    from PIL import Image

    assert parse_parameters(Image.open(tmp_path / "samples" / "00000.png").text["parameters"])["Clip skip"] == "2"


def test_a_bad_clip_skip_names_its_flag(tiny, tmp_path, capsys):
    argv = ["txt2img", "--model", str(tiny("sd1")[0]), "--outdir", str(tmp_path), "--clip-skip", "0"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --clip-skip must be from 1 to 64, got 0 (AUTOMATIC1111's numbering: 1 = the last layer)"]
    assert not list(tmp_path.iterdir())

"""The shipped weights: provenance, and sample quality judged on freshly drawn samples."""

from importlib import resources

import pytest
import torch

from diffusion_notes.toy import judge
from diffusion_notes.toy.demo import GUIDANCE_SCALE, draw_digits
from diffusion_notes.toy.model import DigitsUNet
from diffusion_notes.toy.pretrained import load_pretrained, pretrained_path, read_metadata

# 10 samples of every digit, from a seed used nowhere else (the model card's numbers use seed 0).
LABELS = torch.arange(10).repeat_interleave(10)
SEED = 2024


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained()


def test_shipped_weights_file_and_metadata():
    path = pretrained_path()
    assert path.stat().st_size <= 5 * 2**20
    meta = read_metadata(path)
    assert meta["schedule"] == "linear" and meta["num_timesteps"] == "1000" and meta["parameterization"] == "eps"
    assert int(meta["steps"]) >= 1000 and meta["seed"] == "0"
    # The model card states the exact command that produced these weights.
    card = resources.files("diffusion_notes.toy").joinpath("MODEL_CARD.md").read_text()
    assert meta["command"] in card
    assert f"--steps {meta['steps']}" in meta["command"] and "--seed 0" in meta["command"]


def test_load_pretrained_returns_an_eval_model_and_its_schedule(shipped):
    model, schedule = shipped
    assert isinstance(model, DigitsUNet) and not model.training
    assert schedule.num_timesteps == 1000
    assert torch.isclose(schedule.betas[0], torch.tensor(1e-4, dtype=torch.float64))


@pytest.mark.slow
def test_ddpm_1000_samples_are_the_requested_digits(shipped):
    images = draw_digits(*shipped, LABELS, sampler="ddpm", steps=1000, guidance_scale=GUIDANCE_SCALE, seed=SEED)
    assert judge.mean_top_class_probability(images) >= 0.85  # the bar; real test digits: 0.945
    assert judge.agreement(images, LABELS) >= 0.90


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddim", "plms"])
def test_50_step_samplers_give_recognisable_digits(shipped, sampler):
    images = draw_digits(*shipped, LABELS, sampler=sampler, steps=50, guidance_scale=GUIDANCE_SCALE, seed=SEED)
    assert judge.mean_top_class_probability(images) >= 0.85
    assert judge.agreement(images, LABELS) >= 0.90

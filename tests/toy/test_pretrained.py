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


@pytest.mark.parametrize("objective", ["flow", "edm"])
def test_flow_and_edm_weights_are_the_same_recipe_with_another_objective(objective):
    from diffusion_notes.toy.pretrained import EDM_WEIGHTS_FILE, FLOW_WEIGHTS_FILE

    meta = read_metadata(pretrained_path(FLOW_WEIGHTS_FILE if objective == "flow" else EDM_WEIGHTS_FILE))
    ddpm = read_metadata(pretrained_path())
    assert meta["parameterization"] == objective and meta["objective"] == objective
    for key in ("steps", "seed", "batch_size", "lr", "p_uncond", "ema_decay", "unet_config"):
        assert meta[key] == ddpm[key], key
    card = resources.files("diffusion_notes.toy").joinpath("MODEL_CARD.md").read_text()
    assert meta["command"] in card


def test_flow_and_edm_models_draw_the_requested_digits():
    from diffusion_notes import edm
    from diffusion_notes.flow_sampling import sample_flow
    from diffusion_notes.guidance import guided_eps_model
    from diffusion_notes.samplers.grid import karras_sigmas
    from diffusion_notes.toy import load_pretrained_edm, load_pretrained_flow
    from diffusion_notes.toy.model import NULL_LABEL

    uc = torch.full_like(LABELS, NULL_LABEL)
    noise = torch.randn(len(LABELS), 1, 8, 8, generator=torch.Generator().manual_seed(SEED))
    flow = guided_eps_model(load_pretrained_flow(), LABELS, uc, GUIDANCE_SCALE)
    with torch.no_grad():
        images = sample_flow(lambda x, t: flow(x, torch.full((len(x),), t)), noise, 16, "flow_euler")
    assert judge.agreement(images, LABELS) >= 0.90
    denoiser = load_pretrained_edm()
    guided = lambda x, s: denoiser(x, s, uc) + GUIDANCE_SCALE * (denoiser(x, s, LABELS) - denoiser(x, s, uc))  # noqa: E731
    sigmas = torch.cat([karras_sigmas(0.002, 80.0, 12), torch.zeros(1, dtype=torch.float64)])
    with torch.no_grad():
        images = edm.sample_edm(guided, noise * float(sigmas[0]), sigmas)
    assert judge.agreement(images, LABELS) >= 0.90

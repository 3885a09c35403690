"""Loading diffusers folders: every network equals diffusers' on the same inputs (fp32, 1e-5)."""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.stable_diffusion import StableDiffusion

from models.builders import FAMILIES
from .oracles import diffusers_prompt, diffusers_unet, max_diff, our_unet, unet_inputs

TOL = 1e-5


@pytest.fixture(scope="module")
def loaded(tiny):
    return {family: StableDiffusion.from_pretrained(tiny(family)[0]) for family in FAMILIES}


@pytest.mark.parametrize("size", [(8, 8), (9, 7)])  # odd sides: upsampling must return to the skip's size
@pytest.mark.parametrize("family", FAMILIES)
def test_unet_matches_diffusers(tiny, loaded, family, size):
    pipe, model = tiny(family)[1], loaded[family]
    x, t, context = unet_inputs(model.config.unet, size=size)
    pooled = torch.randn(2, 32) if family == "sdxl" else None
    assert max_diff(our_unet(model, x, t, context, pooled), diffusers_unet(pipe, x, t, context, pooled)) < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_vae_matches_diffusers(tiny, loaded, family):
    pipe, model = tiny(family)[1], loaded[family]
    image = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    z = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs, ours = pipe.vae.encode(image).latent_dist, model.vae.encode(image)
        assert max_diff(ours.mean, theirs.mean) < TOL and max_diff(ours.logvar, theirs.logvar) < TOL
        assert max_diff(model.vae.decode(z), pipe.vae.decode(z).sample) < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_features_match_diffusers(tiny, loaded, family):
    pipe, model = tiny(family)[1], loaded[family]
    context, pooled = model.encode_prompt(["the cat", "a cat that is a cat"])
    their_context, their_pooled = diffusers_prompt(pipe)
    assert context.shape == (2, 77, model.config.unet.context_dim)
    assert max_diff(context, their_context) < TOL
    assert (pooled is None) == (family != "sdxl")
    if pooled is not None:
        assert max_diff(pooled, their_pooled) < TOL


@pytest.mark.parametrize("family, prediction, in_channels", [
    ("sd1", "eps", 4), ("sd1-inpaint", "eps", 9), ("sd2", "v", 4), ("sdxl", "eps", 4)])
def test_family_settings(loaded, family, prediction, in_channels):
    model = loaded[family]
    assert model.family == family.removesuffix("-inpaint")
    assert model.prediction_type == prediction
    assert model.config.unet.in_channels == in_channels
    assert model.config.unet.use_linear_in_transformer == (family in ("sd2", "sdxl"))
    assert (model.config.unet.adm_in_channels is not None) == (family == "sdxl")
    assert model.schedule.num_timesteps == 1000 and model.dtype == torch.float32


def test_prediction_type_override(tiny):
    assert StableDiffusion.from_pretrained(tiny("sd2")[0], prediction_type="eps").prediction_type == "eps"


def test_bfloat16_unet_step_is_finite(tiny):
    model = StableDiffusion.from_pretrained(tiny("sd1")[0], torch_dtype=torch.bfloat16)
    x, t, context = unet_inputs(model.config.unet)
    context = model.encode_prompt(["the cat", "a"])[0]
    with torch.no_grad():
        out = model.unet(x.bfloat16(), t, context)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_bin_weights_are_read_like_safetensors(tiny, loaded, tmp_path):
    import shutil

    from diffusion_notes.checkpoints.io import load_state_dict

    folder = shutil.copytree(tiny("sd1")[0], tmp_path / "sd1-bin")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save({k: v.clone() for k, v in load_state_dict(weights).items()}, folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    model = StableDiffusion.from_pretrained(folder)
    x, t, context = unet_inputs(model.config.unet)
    assert torch.equal(our_unet(model, x, t, context), our_unet(loaded["sd1"], x, t, context))

"""Independent oracles for the pipeline rows of docs/formulas.md: the latent scale through
``decode_latents`` / ``encode_image`` against diffusers' VAE, and the CompVis img2img start
(``scripts/img2img.py``: ``stochastic_encode`` with ``t_enc = int(strength * steps)``) transcribed
from CompVis with numpy and diffusers' VAE, not with this package's ``encode_image`` or ``q_sample``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_notes.pipeline import img2img

from .helpers import SIZE, make_image


def _image_in_minus_one_one(image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float64) / 127.5 - 1.0  # CompVis load_img: 2 * (x / 255) - 1
    return torch.from_numpy(array).permute(2, 0, 1)[None].float()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_latent_scale_in_decode_latents_and_encode_image_equals_diffusers_vae(tiny, ours, family):
    sd, pipe = ours(family), tiny(family)[1]
    # the tiny folders' VAE configs say 0.18215 for every family; from_pretrained reads the folder's value
    assert sd.scale_factor == pipe.vae.config.scaling_factor
    z = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
    assert torch.allclose(sd.decode_latents(z), theirs, atol=1e-5)
    image = _image_in_minus_one_one(make_image())
    with torch.no_grad():
        theirs = pipe.vae.encode(image).latent_dist.sample(torch.Generator().manual_seed(5)) * pipe.vae.config.scaling_factor
    assert torch.allclose(sd.encode_image(image, torch.Generator().manual_seed(5)), theirs, atol=1e-5)


def test_img2img_compvis_rule_equals_a_transcription_of_compvis_img2img(tiny, ours):
    sd, pipe = ours("sd1"), tiny("sd1")[1]
    steps, strength, seed = 10, 0.5, 3
    result = img2img(sd, make_image(), "the cat", strength=strength, steps=steps, seed=seed, return_trajectory=True)

    # CompVis: ddim_timesteps = range(0, 1000, 1000 // S) + 1; ddim_alphas = alphas_cumprod[ddim_timesteps]
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2  # CompVis "linear"
    alphas_cumprod = np.cumprod(1 - betas)
    ddim_timesteps = np.asarray(list(range(0, 1000, 1000 // steps))) + 1
    t_enc = int(strength * steps)
    a = alphas_cumprod[ddim_timesteps][t_enc]
    # decode() runs np.flip(ddim_timesteps[:t_enc])
    assert result.trajectory.timesteps == list(np.flip(ddim_timesteps[:t_enc]))

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        init_latent = pipe.vae.encode(_image_in_minus_one_one(make_image())).latent_dist.sample(generator) * 0.18215
    noise = torch.randn(init_latent.shape, generator=generator)
    z_enc = np.sqrt(a) * init_latent.double() + np.sqrt(1 - a) * noise.double()  # stochastic_encode
    assert torch.allclose(result.trajectory.x[0].double(), z_enc, atol=1e-5)

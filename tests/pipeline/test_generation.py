"""The pipeline's own promises: reproducible seeds, CPU noise, strength rules, inpainting, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_notes.forward import q_sample
from diffusion_notes.pipeline import (
    default_size,
    encode_image,
    img2img,
    inpaint,
    vae_factor,
    strength_timesteps,
    txt2img,
)
from diffusion_notes.prompts import PromptTruncatedWarning
from diffusion_notes.settings import ImageSize
from diffusion_notes.samplers import make_timesteps

from .helpers import SIZE, make_image, make_mask

STEPS = 5


def _txt2img(sd, **kwargs):
    return txt2img(sd, "the cat", steps=STEPS, sampler="ddim", height=SIZE, width=SIZE, **kwargs)


def test_same_seed_same_image_different_seed_different_image(ours):
    sd = ours("sd1")
    first, again, other = _txt2img(sd, seed=7), _txt2img(sd, seed=7), _txt2img(sd, seed=8)
    assert torch.equal(first.latents, again.latents)
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other.images[0]))
    assert first.seed == 7 and first.infotext().endswith("Seed: 7, Size: 32x32")


def test_x_T_comes_from_a_cpu_generator_seeded_with_seed(ours):
    result = _txt2img(ours("sd1"), seed=11, return_trajectory=True, output="latent")
    expected = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator("cpu").manual_seed(11))
    assert torch.equal(result.trajectory.x[0], expected)
    assert result.images == [] and result.arrays is None


def test_no_seed_picks_one_and_reports_it(ours):
    result = _txt2img(ours("sd1"), output="latent")
    assert torch.equal(result.latents, _txt2img(ours("sd1"), seed=result.seed, output="latent").latents)


def test_trajectory_holds_every_step_and_decodes_pred_x0(ours):
    result = _txt2img(ours("sd1"), seed=1, num_images=2, return_trajectory="decoded")
    assert result.trajectory.timesteps == [int(t) for t in make_timesteps(STEPS)[::-1]]
    assert len(result.trajectory.pred_x0) == STEPS and len(result.pred_x0_images) == STEPS
    assert len(result.pred_x0_images[-1]) == 2 and result.pred_x0_images[-1][0].size == (SIZE, SIZE)


def test_sd2_v_prediction_runs_with_plms_and_ddim(ours):
    for sampler in ("plms", "ddim"):
        result = txt2img(ours("sd2"), "the cat", steps=STEPS, sampler=sampler, height=SIZE, width=SIZE, seed=0)
        assert np.isfinite(result.arrays).all()


def test_family_default_sizes(ours):
    assert default_size(ours("sd1")) == (512, 512) and default_size(ours("sdxl")) == (1024, 1024)
    assert default_size(ours("sd2")) == (768, 768)  # the tiny SD 2 model predicts v, like SD 2.x-768


def test_long_prompt_warning_quotes_the_dropped_words(ours):
    prompt = "the cat " * 37 + "a hat"  # 74 tokens + "a" fill the 75 places; "h", "a", "t" are cut
    with pytest.warns(PromptTruncatedWarning, match='dropped and do not affect the image: "hat"'):
        txt2img(ours("sd1"), prompt, steps=1, sampler="ddim", height=SIZE, width=SIZE, seed=0, output="latent")


def test_strength_rules_in_numbers():
    timesteps = make_timesteps(10)  # 1, 101, ..., 901
    kept, t_noise = strength_timesteps(timesteps, 10, 0.75, "compvis")  # t_enc = 7
    assert list(kept) == [1, 101, 201, 301, 401, 501, 601] and t_noise == 701  # noised one step above
    kept, t_noise = strength_timesteps(timesteps, 10, 0.75, "diffusers")  # init_timestep = 7, t_start = 3
    assert list(kept) == [1, 101, 201, 301, 401, 501, 601] and t_noise == 601
    kept, t_noise = strength_timesteps(timesteps, 10, 0.0, "diffusers")
    assert len(kept) == 0 and t_noise is None  # nothing to denoise
    with pytest.raises(ValueError, match="CompVis fails here too"):
        strength_timesteps(timesteps, 10, 1.0, "compvis")
    with pytest.raises(ValueError, match=r"strength must be between 0.0 and 1.0"):
        strength_timesteps(timesteps, 10, 1.5, "diffusers")


def test_img2img_compvis_rule_noises_to_t_enc_and_denoises_below_it(ours):
    sd = ours("sd1")
    result = img2img(sd, make_image(), "the cat", strength=0.5, steps=10, seed=3, return_trajectory=True)
    assert result.trajectory.timesteps == [401, 301, 201, 101, 1]
    generator = torch.Generator().manual_seed(3)
    z0 = encode_image(sd, make_image_tensor(), generator)
    noise = torch.randn(z0.shape, generator=generator)
    assert torch.allclose(result.trajectory.x[0], q_sample(z0, torch.tensor([501]), noise, sd.schedule), atol=1e-6)
    assert "Denoising strength: 0.5" in result.infotext()


def make_image_tensor():
    from diffusion_notes.images import pil_to_tensor

    return pil_to_tensor(make_image())


def test_img2img_strength_zero_returns_the_encoded_image(ours):
    sd = ours("sd1")
    result = img2img(sd, make_image(), "the cat", strength=0.0, strength_rule="diffusers", steps=10, seed=3,
                     output="latent")
    assert torch.equal(result.latents, encode_image(sd, make_image_tensor(), torch.Generator().manual_seed(3)))


def test_inpaint_with_a_4_channel_model_keeps_the_unmasked_latents(ours):
    sd = ours("sd1")
    result = inpaint(sd, make_image(), make_mask(), "the cat", steps=STEPS, seed=2, output="latent")
    z0 = encode_image(sd, make_image_tensor(), torch.Generator().manual_seed(2))
    keep = torch.nn.functional.interpolate(1 - torch.from_numpy(np.asarray(make_mask()) / 255.0).float()[None, None],
                                           size=(SIZE // 2, SIZE // 2))
    assert torch.equal(result.latents * keep, z0 * keep)
    assert not torch.equal(result.latents * (1 - keep), z0 * (1 - keep))


@pytest.mark.parametrize("kwargs, message", [
    (dict(height=31), "height 31 is not a multiple of 2"),
    (dict(steps=0), "number of sampling steps"),
    (dict(steps=2000), "number of sampling steps"),
    (dict(guidance_scale=-1), "guidance_scale must be >= 0"),
    (dict(eta=-0.5), "eta must be >= 0"),
    (dict(sampler="bogus"), "sampler must be one of"),
    (dict(output="jpeg"), "output must be one of"),
    (dict(latents=torch.zeros(1, 4, 8, 8)), "latents must have shape"),
])
def test_txt2img_errors_name_the_problem(ours, kwargs, message):
    settings = dict(steps=STEPS, sampler="ddim", height=SIZE, width=SIZE) | kwargs
    with pytest.raises(ValueError, match=message):
        txt2img(ours("sd1"), "the cat", **settings)


def test_size_multiple_is_the_vae_factor(ours):
    assert vae_factor(ours("sd1")) == 2  # tiny VAE: x2 (every SD release: x8)
    ImageSize(18, 34).check_multiple(vae_factor(ours("sd1")))  # odd latent sides (9 x 17) are fine: the UNet upsamples to its skips
    with pytest.raises(ValueError, match="height 31 is not a multiple of 2.*use 30 or 32"):
        ImageSize(31, 34).check_multiple(vae_factor(ours("sd1")))


def test_inpaint_errors(ours):
    from PIL import Image

    with pytest.raises(ValueError, match="the image is 32x32 but the mask is 16x32"):
        inpaint(ours("sd1"), make_image(), Image.new("L", (16, 32)), "the cat", steps=STEPS)
    with pytest.raises(ValueError, match="inpainting checkpoint"):
        _txt2img(ours("sd1-inpaint"))


def test_x_T_matches_the_latents_argument(ours):
    """``latents=`` is x_T itself: passing the seed's own noise reproduces the seeded image bit for bit."""
    seeded = _txt2img(ours("sd1"), seed=5, output="latent")
    given = _txt2img(ours("sd1"), latents=torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5)),
                     output="latent")
    assert torch.equal(seeded.latents, given.latents)


def test_memory_options_do_not_change_the_image(tiny):
    from diffusion_notes.pipeline import MemoryOptions
    from diffusion_notes.stable_diffusion import StableDiffusion

    sd = StableDiffusion.from_pretrained(tiny("sd1")[0])  # its own copy: offloading and channels-last move weights
    plain = _txt2img(sd, seed=4, num_images=2)
    frugal = MemoryOptions(vae_slicing=True, upcast_attention=True, offload_text_encoder=True, channels_last=True)
    assert np.abs(_txt2img(sd, seed=4, num_images=2, memory=frugal).arrays - plain.arrays).max() < 1e-5
    assert not any(getattr(m, "upcast_attention", False) for m in sd.unet.modules())  # switched back off


def test_methods_on_the_model_are_the_pipeline_functions(ours):
    from diffusion_notes.pipeline import txt2img

    sd = ours("sd1")
    a = sd.txt2img("a cat", steps=4, seed=7, height=16, width=16, output="array")
    b = txt2img(sd, "a cat", steps=4, seed=7, height=16, width=16, output="array")
    assert np.array_equal(a.arrays, b.arrays)


def test_compvis_rule_below_one_step_keeps_the_image():
    from diffusion_notes.pipeline import strength_timesteps

    kept, t_noise = strength_timesteps(make_timesteps(10), 10, 0.05, "compvis")  # int(0.05 * 10) = 0 steps
    assert len(kept) == 0 and t_noise is None

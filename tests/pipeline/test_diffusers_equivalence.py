"""Our pipelines against diffusers' on the same tiny random checkpoints, the same x_T and matched
scheduler settings: images (``output_type="np"``, floats in [0, 1]) equal to ``TOL``.

Matched settings: ``DDIMScheduler(steps_offset=1, set_alpha_to_one=False, clip_sample=False)`` is our
DDIM with ``spacing="leading"``; ``PNDMScheduler(skip_prk_steps=True, ...)`` is our PLMS, and with 10
steps (10 divides 1000) CompVis's default ``"uniform"`` spacing visits the same timesteps. SD 2.x
(v-prediction) is compared with DDIM only: diffusers' PNDM combines raw v outputs, CompVis and we
convert each to eps first (docs/conventions.md).
"""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.pipeline import img2img, inpaint, txt2img

from .helpers import SIZE, make_image, make_mask, make_x_T, max_diff

TOL = 1e-4
STEPS = 10


def _scheduler(pipe, sampler: str):
    from diffusers import DDIMScheduler, PNDMScheduler

    if sampler == "plms":
        return PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True, steps_offset=1,
                                         set_alpha_to_one=False)
    return DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=1, set_alpha_to_one=False, clip_sample=False)


def _their_pipeline(tiny, family: str, sampler: str, cls=None):
    pipe = tiny(family)[1]
    return (cls or type(pipe)).from_pipe(pipe, scheduler=_scheduler(pipe, sampler))


@pytest.mark.parametrize("family, sampler, spacing", [
    ("sd1", "plms", None),  # CompVis "uniform" == diffusers "leading" + steps_offset=1 when S divides T
    ("sd1", "ddim", "leading"),
    ("sd2", "ddim", "leading"),
    ("sdxl", "plms", "leading"),
    ("sdxl", "ddim", None),
])
def test_txt2img_matches_diffusers(tiny, ours, family, sampler, spacing):
    theirs = _their_pipeline(tiny, family, sampler)
    expected = theirs("the cat", height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=7.5,
                      latents=make_x_T(), output_type="np").images
    result = txt2img(ours(family), "the cat", steps=STEPS, sampler=sampler, height=SIZE, width=SIZE,
                     latents=make_x_T(), spacing=spacing, output="array")
    assert result.arrays.shape == (1, SIZE, SIZE, 3)
    assert max_diff(result.arrays, expected) < TOL


def test_batch_of_prompts_with_negative_prompts_matches_diffusers(tiny, ours):
    theirs = _their_pipeline(tiny, "sd1", "ddim")
    prompts, negatives = ["the cat", "a cat that is a cat"], ["hat", "the"]
    expected = theirs(prompts, negative_prompt=negatives, num_images_per_prompt=2, height=SIZE, width=SIZE,
                      num_inference_steps=STEPS, latents=make_x_T(batch=4), output_type="np").images
    result = txt2img(ours("sd1"), prompts, negative_prompt=negatives, num_images=2, steps=STEPS, sampler="ddim",
                     height=SIZE, width=SIZE, latents=make_x_T(batch=4), output="array")
    assert result.prompts == ["the cat", "the cat", "a cat that is a cat", "a cat that is a cat"]
    assert max_diff(result.arrays, expected) < TOL


def test_sdxl_size_and_crop_conditioning_matches_diffusers(tiny, ours):
    theirs = _their_pipeline(tiny, "sdxl", "ddim")
    sizes = dict(original_size=(64, 48), crops_coords_top_left=(4, 8), target_size=(SIZE, SIZE))
    expected = theirs("the cat", negative_prompt="hat", guidance_scale=7.5, height=SIZE, width=SIZE,
                      num_inference_steps=STEPS, latents=make_x_T(), output_type="np", **sizes).images
    result = txt2img(ours("sdxl"), "the cat", negative_prompt="hat", steps=STEPS, sampler="ddim", height=SIZE,
                     width=SIZE, latents=make_x_T(), output="array", **sizes)
    assert max_diff(result.arrays, expected) < TOL
    default = txt2img(ours("sdxl"), "the cat", negative_prompt="hat", steps=STEPS, sampler="ddim", height=SIZE,
                      width=SIZE, latents=make_x_T(), output="array")
    assert max_diff(default.arrays, result.arrays) > 1e-3  # the size vector does reach the UNet


def test_sd2_v_prediction_plms_is_compvis_not_pndm_scheduler(tiny, ours):
    """The documented difference: with v outputs, PLMS on converted eps (CompVis) != PNDM on raw v (diffusers)."""
    theirs = _their_pipeline(tiny, "sd2", "plms")
    expected = theirs("the cat", height=SIZE, width=SIZE, num_inference_steps=STEPS, latents=make_x_T(),
                      output_type="np").images
    result = txt2img(ours("sd2"), "the cat", steps=STEPS, height=SIZE, width=SIZE, latents=make_x_T(), output="array")
    assert max_diff(result.arrays, expected) > 1e-3


def test_img2img_with_the_diffusers_strength_rule_matches_diffusers(tiny, ours):
    from diffusers import StableDiffusionImg2ImgPipeline

    theirs = _their_pipeline(tiny, "sd1", "ddim", StableDiffusionImg2ImgPipeline)
    expected = theirs("the cat", image=make_image(), strength=0.6, num_inference_steps=STEPS,
                      generator=torch.Generator().manual_seed(5), output_type="np").images
    result = img2img(ours("sd1"), make_image(), "the cat", strength=0.6, strength_rule="diffusers", steps=STEPS,
                     spacing="leading", generator=torch.Generator().manual_seed(5), output="array")
    assert max_diff(result.arrays, expected) < TOL


@pytest.mark.parametrize("family, strength", [("sd1-inpaint", 1.0), ("sd1-inpaint", 0.7), ("sd1", 1.0)])
def test_inpaint_matches_diffusers(tiny, ours, family, strength):
    """9 channels: the UNet reads cat([x, mask, masked_image_latents]); 4 channels: latent blending."""
    from diffusers import StableDiffusionInpaintPipeline

    theirs = _their_pipeline(tiny, family, "ddim", StableDiffusionInpaintPipeline)
    expected = theirs("the cat", image=make_image(), mask_image=make_mask(), height=SIZE, width=SIZE,
                      strength=strength, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(5),
                      output_type="np").images
    result = inpaint(ours(family), make_image(), make_mask(), "the cat", strength=strength, steps=STEPS,
                     spacing="leading", generator=torch.Generator().manual_seed(5), output="array")
    assert max_diff(result.arrays, expected) < TOL

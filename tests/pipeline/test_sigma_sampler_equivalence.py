"""txt2img with the σ samplers against diffusers' StableDiffusionPipeline / StableDiffusionXLPipeline on the
tiny random checkpoints: the same x_T, the same scheduler noise, matched σ grids; images equal to ``TOL``.

Matched settings (docs/conventions.md, "σ samplers"): diffusers' Euler family with ``timestep_spacing="leading"``
and ``steps_offset=1`` starts from ``latents * sqrt(sigma_max^2 + 1)``, i.e. from our x_T = latents with
``spacing="leading"``; DPM-Solver++ with Karras σ rounds its timesteps (our ``quantize``); UniPC's
``trailing`` spacing is ours. The A1111 label, σ schedule included, goes into the PNG ``parameters`` chunk.
"""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.images import parse_parameters, save_png
from diffusion_notes.pipeline import txt2img

from .helpers import SIZE, make_x_T, max_diff

TOL = 1e-4
STEPS = 10


def _scheduler(pipe, sampler: str, schedule: str):
    from diffusers import (DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                           UniPCMultistepScheduler)

    config = pipe.scheduler.config
    if sampler == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config, timestep_spacing="leading", steps_offset=1)
    if sampler == "euler":
        return EulerDiscreteScheduler.from_config(config, timestep_spacing="linspace", use_karras_sigmas=schedule == "karras")
    if sampler == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       use_karras_sigmas=schedule == "karras")
    return UniPCMultistepScheduler.from_config(config, timestep_spacing="trailing")


# (family, sampler, sigma schedule, our extra keywords, A1111 label)
CASES = [
    ("sd1", "euler_a", "default", dict(spacing="leading", steps_offset=1), "Euler a"),
    ("sd1", "dpmpp_2m", "karras", dict(sampler_options={"quantize": True}), "DPM++ 2M Karras"),
    ("sd1", "unipc", "default", dict(spacing="trailing"), "UniPC"),
    # fractional timesteps through the UNet; diffusers' linspace Euler starts from latents * sigma_max
    ("sd1", "euler", "karras", dict(init="sigma_max"), "Euler Karras"),
    ("sd2", "dpmpp_2m", "karras", dict(sampler_options={"quantize": True}), "DPM++ 2M Karras"),  # v-prediction
    ("sdxl", "euler_a", "default", dict(spacing="leading", steps_offset=1), "Euler a"),
    ("sdxl", "dpmpp_2m", "karras", dict(sampler_options={"quantize": True}), "DPM++ 2M Karras"),
    ("sdxl", "unipc", "default", dict(spacing="trailing"), "UniPC"),
]


@pytest.mark.parametrize("family, sampler, schedule, extra, label", [(f, s, sc, dict(e), lab) for f, s, sc, e, lab in CASES],
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_txt2img_with_sigma_samplers_matches_diffusers(tiny, ours, tmp_path, family, sampler, schedule, extra, label):
    pipe = tiny(family)[1]
    theirs = type(pipe).from_pipe(pipe, scheduler=_scheduler(pipe, sampler, schedule))
    expected = theirs("the cat", height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=7.5,
                      latents=make_x_T(), generator=torch.Generator().manual_seed(5), output_type="np").images
    x_T = make_x_T()
    if extra.pop("init", None) == "sigma_max":  # x-bar_T = sigma_max z is x_T = sqrt(1 - alphas_cumprod[T-1]) z
        x_T = x_T * float(ours(family).schedule.sqrt_one_minus_alphas_cumprod[-1])
    result = txt2img(ours(family), "the cat", steps=STEPS, sampler=sampler, sigma_schedule=schedule, height=SIZE,
                     width=SIZE, latents=x_T, generator=torch.Generator().manual_seed(5), **extra)
    assert max_diff(result.arrays, expected) < TOL
    from PIL import Image

    path = save_png(result.images[0], tmp_path / "image.png", result.infotext())
    parameters = parse_parameters(Image.open(path).text["parameters"])
    assert parameters["Sampler"] == label and parameters["Steps"] == str(STEPS)


def test_command_line_takes_a_sigma_sampler_and_schedule(tiny, ours, tmp_path):
    """``--sampler dpmpp_2m --schedule karras``: the same image as the Python call, labelled as AUTOMATIC1111 does."""
    from PIL import Image

    from diffusion_notes import cli

    folder, out = tiny("sd1")[0], tmp_path / "out"
    argv = ["txt2img", "--prompt", "the cat", "--model", str(folder), "--H", str(SIZE), "--W", str(SIZE), "--outdir",
            str(out), "--ddim_steps", "4", "--device", "cpu", "--sampler", "dpmpp_2m", "--schedule", "karras", "--seed", "3"]
    assert cli.main(argv) == 0
    with Image.open(out / "samples" / "00000.png") as image:
        parameters = parse_parameters(image.text["parameters"])
        pixels = torch.tensor(list(image.getdata()), dtype=torch.float32)
    assert (parameters["Sampler"], parameters["Steps"], parameters["Seed"]) == ("DPM++ 2M Karras", "4", "3")
    expected = txt2img(ours("sd1"), "the cat", steps=4, sampler="dpmpp_2m", sigma_schedule="karras", height=SIZE,
                       width=SIZE, seed=3).images[0]
    assert torch.equal(pixels, torch.tensor(list(expected.getdata()), dtype=torch.float32))

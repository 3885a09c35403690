"""On a CPU with native bf16, loading without a dtype gives bf16 networks; the pipeline then keeps the
latents in float32 and the picture stays close to the fp32 one (and to diffusers' fp32 oracle)."""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.hardware import forced_cpu_support
from diffusion_notes.pipeline import txt2img
from diffusion_notes.stable_diffusion import StableDiffusion

from .helpers import SIZE, make_x_T, max_diff


@pytest.fixture
def amx_cpu():
    """Pretend to be a CPU with native bf16 (bf16 itself runs everywhere, emulated where not native)."""
    with forced_cpu_support(native_bf16=True):
        yield


def test_loading_without_a_dtype_gives_bf16_on_a_bf16_cpu(tiny, amx_cpu):
    sd = StableDiffusion.from_pretrained(tiny("sd1")[0])
    assert sd.dtype == torch.bfloat16 and next(sd.vae.parameters()).dtype == torch.bfloat16
    assert StableDiffusion.from_pretrained(tiny("sd1")[0], torch_dtype=torch.float32).dtype == torch.float32


def test_bf16_txt2img_keeps_float32_latents_and_stays_close_to_diffusers_fp32(tiny, amx_cpu):
    pipe = tiny("sd1")[1]  # diffusers, fp32: the oracle
    expected = pipe("the cat", height=SIZE, width=SIZE, num_inference_steps=10, latents=make_x_T(),
                    output_type="np").images
    steps = []
    sd = StableDiffusion.from_pretrained(tiny("sd1")[0])
    result = txt2img(sd, "the cat", steps=10, sampler="ddim", spacing="leading", height=SIZE, width=SIZE,
                     latents=make_x_T(), output="array", callback=lambda i, t, x, x0: steps.append(x.dtype))
    assert set(steps) == {torch.float32} and result.latents.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: pixels within a few hundredths of the fp32 image in [0, 1].
    assert max_diff(result.arrays, expected) < 5e-2

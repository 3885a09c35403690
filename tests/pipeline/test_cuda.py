"""The pipeline on a GPU (skipped without one): full-size SD 1.5 shapes in fp16, the float32 decode
fallback, and seeds that give the same x_T on CPU and CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_notes.pipeline import MemoryOptions, NonFiniteDecodeWarning, decode, txt2img
from diffusion_notes.stable_diffusion import StableDiffusion

from .helpers import SIZE

pytestmark = pytest.mark.cuda


def _random_sd15(tmp_path, dtype=torch.float16) -> StableDiffusion:
    """SD 1.5's architecture (860M-parameter UNet, f=8 VAE, CLIP ViT-L) with random weights, on the GPU."""
    from benchmarks.random_models import clip_vit_l, load_tokenizer

    from diffusion_notes.models.config import TEXT_SPECS, unet_preset, vae_preset
    from diffusion_notes.models.text import PromptEncoder
    from diffusion_notes.models.unet import UNetModel
    from diffusion_notes.models.vae import AutoencoderKL
    from diffusion_notes.stable_diffusion import StableDiffusionConfig

    tokenizer = load_tokenizer(tmp_path / "tok")
    config = StableDiffusionConfig("sd1", unet_preset("sd1"), vae_preset())
    with torch.device("cuda"):
        torch.manual_seed(0)
        text = clip_vit_l(tokenizer)
        sd = StableDiffusion(config, UNetModel(config.unet), AutoencoderKL(config.vae),
                             PromptEncoder([tokenizer], [text], TEXT_SPECS["sd1"]))
    return sd.to("cuda", dtype).requires_grad_(False).eval()


@pytest.mark.slow
def test_full_size_sd15_fp16_512px_50_plms_steps_gives_finite_images(tmp_path):
    sd = _random_sd15(tmp_path)
    shapes = []
    sd.unet.time_embed.register_forward_hook(lambda module, inputs, output: shapes.append(tuple(output.shape)))
    result = txt2img(sd, "a photograph of an astronaut riding a horse", steps=50, sampler="plms", num_images=3, seed=42)
    assert shapes[0] == (3 + 3, 1280)  # the seed's time embedding: uc and c rows in one batch
    assert result.arrays.shape == (3, 512, 512, 3) and np.isfinite(result.arrays).all()
    assert result.latents.dtype == torch.float32 and torch.isfinite(result.latents).all()


def test_fp16_vae_overflow_is_decoded_again_in_float32(tiny):
    sd = StableDiffusion.from_pretrained(tiny("sd1")[0], torch_dtype=torch.float16, device="cuda")
    # Intermediate activations beyond fp16's 65504 become inf, then NaN: what the SDXL VAE does in fp16.
    sd.vae.decoder.mid.block_1.register_forward_hook(
        lambda module, inputs, output: output * 1e6 if output.dtype == torch.float16 else output)
    z = torch.randn(1, 4, SIZE // 2, SIZE // 2, device="cuda")
    with pytest.warns(NonFiniteDecodeWarning):
        image = decode(sd, z, MemoryOptions(vae_slicing=True))
    assert torch.isfinite(image).all() and next(sd.vae.parameters()).dtype == torch.float16


def test_one_seed_gives_the_same_x_T_on_cpu_and_cuda(tiny, ours):
    cpu = ours("sd1")
    cuda = StableDiffusion.from_pretrained(tiny("sd1")[0], torch_dtype=torch.float32, device="cuda")  # CUDA's default is fp16
    kwargs = dict(steps=5, sampler="ddim", height=SIZE, width=SIZE, seed=9, return_trajectory=True)
    on_cpu, on_cuda = txt2img(cpu, "the cat", **kwargs), txt2img(cuda, "the cat", **kwargs)
    assert torch.equal(on_cuda.trajectory.x[0].cpu(), on_cpu.trajectory.x[0])
    assert np.abs(on_cuda.arrays - on_cpu.arrays).max() < 1e-3  # same picture; kernels differ in the last bits


"""A full-size SD 1.5-shaped model in fp16 on a GPU (skipped without one)."""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.stable_diffusion import StableDiffusion

from benchmarks.random_models import random_sd15_pipeline


@pytest.mark.cuda
@pytest.mark.slow
def test_full_size_sd15_fp16_unet_step_on_cuda(tmp_path):
    pipe = random_sd15_pipeline("full", tokenizer_folder=tmp_path / "tok")  # SD 1.5's shapes, CLIP ViT-L/14's text tower
    pipe.save_pretrained(tmp_path / "sd15")
    single = tmp_path / "sd15.safetensors"
    StableDiffusion.from_pretrained(tmp_path / "sd15").save_single_file(single)
    model = StableDiffusion.from_single_file(single, tokenizer=tmp_path / "sd15", torch_dtype=torch.float16,
                                             device="cuda")
    assert model.dtype == torch.float16 and model.device.type == "cuda"
    context, _ = model.encode_prompt(["a photograph of an astronaut riding a horse"] * 2)
    assert context.shape == (2, 77, 768)
    x = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        eps = model.unet(x, torch.tensor([999, 999], device="cuda"), context)
        reference = pipe.unet.to("cuda", torch.float16)(x, torch.tensor([999, 999], device="cuda"), context).sample
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    assert (eps - reference).abs().max() < 1e-2 * reference.abs().max()  # fp16 rounding only

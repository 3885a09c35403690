"""A full-size SD 1.5-shaped model in fp16 on a GPU (skipped without one)."""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.stable_diffusion import StableDiffusion

from .builders import make_scheduler, write_tiny_tokenizer


@pytest.mark.cuda
@pytest.mark.slow
def test_full_size_sd15_fp16_unet_step_on_cuda(tmp_path):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(tmp_path / "tok"))
    text = CLIPTextModel(CLIPTextConfig(  # CLIP ViT-L/14's text tower
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
        hidden_act="quick_gelu", **{k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}))
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)  # SD 1.5's defaults
    pipe = StableDiffusionPipeline(vae=AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                                     down_block_types=("DownEncoderBlock2D",) * 4,
                                                     up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4),
                                   text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=make_scheduler("epsilon"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
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
        reference = unet.to("cuda", torch.float16)(x, torch.tensor([999, 999], device="cuda"), context).sample
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    assert (eps - reference).abs().max() < 1e-2 * reference.abs().max()  # fp16 rounding only

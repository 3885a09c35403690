"""LoRA merged by this package vs diffusers + PEFT (``load_lora_weights`` + ``fuse_lora(lora_scale=s)``).

The same tiny random SD pipeline is loaded twice, once by diffusers and once as our ``StableDiffusion``;
the same LoRA file goes into each; the UNet's and the text encoder's outputs must agree to 1e-5
relative in float32 (and must have moved: a LoRA that changed nothing would pass trivially).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from diffusion_notes.stable_diffusion import StableDiffusion

from .lora_files import TEXT_LAYERS, UNET_LAYERS, kohya_lora, peft_layers

pytest.importorskip("peft")  # diffusers' LoRA loading needs it (a dev extra)

PROMPTS = ["a house on a hill", "sky"]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def load_both(tiny, family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = tiny(family)[0]
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(folder, torch_dtype=torch.float32)
    return pipe, StableDiffusion.from_pretrained(folder, torch_dtype=torch.float32)


def outputs_of_ours(sd):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, sd.config.unet.context_dim, generator=g)
    t = torch.tensor([10, 600])
    y = None
    if sd.family == "sdxl":  # SDXL's label: the pooled text vector and the size conditioning
        y = sd.sdxl_label(torch.randn(2, 32, generator=g), original_size=(64, 64))
    with torch.no_grad():
        return sd.unet(x, t, context, y=y), sd.encode_prompt(PROMPTS)[0]


def outputs_of_diffusers(pipe):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([10, 600])
    kwargs = {}
    if hasattr(pipe, "text_encoder_2"):
        pooled, time_ids = torch.randn(2, 32, generator=g), torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
        kwargs = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
    with torch.no_grad():
        unet = pipe.unet(x, t, encoder_hidden_states=context, **kwargs).sample
        if hasattr(pipe, "text_encoder_2"):
            text = pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[0]
        else:
            text = pipe.encode_prompt(PROMPTS, "cpu", 1, False)[0]
    return unet, text


@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_kohya_lora_equals_diffusers_fuse_lora(tiny, tmp_path, scale):
    pipe, sd = load_both(tiny, "sd1")
    base_unet, base_text = outputs_of_ours(sd)
    path = tmp_path / "kohya_style.safetensors"
    save_file(kohya_lora(pipe), path)

    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=scale)
    sd.load_lora(path, scale=scale)

    (unet, text), (their_unet, their_text) = outputs_of_ours(sd), outputs_of_diffusers(pipe)
    assert relative(unet, their_unet) < 1e-5
    assert relative(text, their_text) < 1e-5
    assert relative(unet, base_unet) > 1e-2 and relative(text, base_text) > 1e-2  # the LoRA did change both
    print(f"kohya scale {scale}: unet {relative(unet, their_unet):.2e}, text {relative(text, their_text):.2e}")


def test_peft_lora_written_by_diffusers_equals_diffusers_fuse_lora(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe, sd = load_both(tiny, "sd1")
    base_unet, base_text = outputs_of_ours(sd)
    g = torch.Generator().manual_seed(1)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=peft_layers(pipe.unet, UNET_LAYERS, 4, g),
        text_encoder_lora_layers=peft_layers(pipe.text_encoder, TEXT_LAYERS, 4, g))
    path = tmp_path / "pytorch_lora_weights.safetensors"

    pipe.load_lora_weights(tmp_path)
    pipe.fuse_lora(lora_scale=0.8)
    sd.load_lora(path, scale=0.8)

    (unet, text), (their_unet, their_text) = outputs_of_ours(sd), outputs_of_diffusers(pipe)
    assert relative(unet, their_unet) < 1e-5
    assert relative(text, their_text) < 1e-5
    assert relative(unet, base_unet) > 1e-2 and relative(text, base_text) > 1e-2
    print(f"peft: unet {relative(unet, their_unet):.2e}, text {relative(text, their_text):.2e}")


def test_sdxl_kohya_lora_with_both_text_encoders_equals_diffusers_fuse_lora(tiny, tmp_path):
    """kohya's SDXL files use sgm UNet names (input_blocks_4_1_...) and lora_te1_ / lora_te2_."""
    from .lora_files import kohya_sdxl_lora

    pipe, sd = load_both(tiny, "sdxl")
    base_unet, base_text = outputs_of_ours(sd)
    path = tmp_path / "sdxl_kohya.safetensors"
    save_file(kohya_sdxl_lora(sd, pipe), path)

    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=0.9)
    sd.load_lora(path, scale=0.9)

    (unet, text), (their_unet, their_text) = outputs_of_ours(sd), outputs_of_diffusers(pipe)
    assert relative(unet, their_unet) < 1e-5
    assert relative(text, their_text) < 1e-5
    assert relative(unet, base_unet) > 1e-2 and relative(text, base_text) > 1e-2
    for half in (slice(0, 64), slice(64, 192)):  # CLIP-L's and bigG's parts of the context both moved
        assert relative(text[..., half], base_text[..., half]) > 1e-2
    print(f"sdxl kohya: unet {relative(unet, their_unet):.2e}, text {relative(text, their_text):.2e}")


def old_diffusers_names(peft_state: dict) -> dict:
    """The PEFT-named UNet factors of attention layers renamed to diffusers' pre-PEFT attention-processor keys:
    ``<attn>.processor.to_q_lora.down.weight`` (``to_out_lora`` for ``to_out.0``), others ``<layer>.lora.down.weight``."""
    old = {}
    for key, tensor in peft_state.items():
        layer, role = key.rsplit(".lora_", 1)
        role = "down" if role.startswith("A") else "up"
        head, _, last = layer.removesuffix(".0").rpartition(".")
        if last in ("to_q", "to_k", "to_v", "to_out"):
            old[f"unet.{head}.processor.{last}_lora.{role}.weight"] = tensor
        else:
            old[f"unet.{layer}.lora.{role}.weight"] = tensor
    return old


def test_old_diffusers_attention_processor_lora_equals_diffusers_fuse_lora(tiny):
    pipe, sd = load_both(tiny, "sd1")
    base_unet, _ = outputs_of_ours(sd)
    state = old_diffusers_names(peft_layers(pipe.unet, UNET_LAYERS, 4, torch.Generator().manual_seed(3)))
    assert any("processor.to_out_lora" in k for k in state) and any(".lora.down." in k for k in state)

    pipe.load_lora_weights(dict(state))
    pipe.fuse_lora(lora_scale=1.0)
    sd.load_lora(state)

    unet, their_unet = outputs_of_ours(sd)[0], outputs_of_diffusers(pipe)[0]
    assert relative(unet, their_unet) < 1e-5
    assert relative(unet, base_unet) > 1e-2
    print(f"old diffusers: unet {relative(unet, their_unet):.2e}")

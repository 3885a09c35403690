"""Run diffusers' pipeline components and ours on the same random inputs."""

from __future__ import annotations

import torch

PROMPTS = ["the cat", "a cat that is a cat"]
# SDXL micro-conditioning used in the tests: (orig_h, orig_w, crop_top, crop_left, target_h, target_w).
SIZES = ((64, 48), (0, 0), (64, 48))


def unet_inputs(config, seed: int = 0, size=(8, 8)):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, config.in_channels, *size, generator=generator)
    context = torch.randn(2, 77, config.context_dim, generator=generator)
    return x, torch.tensor([3, 981]), context


def diffusers_unet(pipe, x, t, context, pooled=None):
    kwargs = {}
    if pooled is not None:
        time_ids = torch.tensor([[v for pair in SIZES for v in pair]], dtype=torch.float32).expand(x.shape[0], 6)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    with torch.no_grad():
        return pipe.unet(x, t, context, **kwargs).sample


def our_unet(model, x, t, context, pooled=None):
    y = model.sdxl_label(pooled, *SIZES) if pooled is not None else None
    with torch.no_grad():
        return model.unet(x, t, context, y=y)


def diffusers_prompt(pipe, prompts=PROMPTS):
    """``(context, pooled)`` from diffusers' ``encode_prompt`` (pooled None except SDXL)."""
    out = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    return (out[0], out[2]) if len(out) == 4 else (out[0], None)


def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()

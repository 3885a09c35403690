"""Random LoRA files for the tiny pipelines, written in kohya's and diffusers' (PEFT) spellings."""

from __future__ import annotations

import re

import torch

#: The diffusers module names a LoRA adapts in the tests: attention q/k/v/out, feed-forward, the
#: SpatialTransformer's proj_in/out, and ResBlock convolutions (kohya's LoCon); text: q/k/v/out, fc1/fc2.
UNET_LAYERS = re.compile(r".*(attn[12]\.to_(q|k|v|out\.0)|ff\.net\.(0\.proj|2)|proj_(in|out)|resnets\.\d\.conv[12])$")
TEXT_LAYERS = re.compile(r".*(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")


def adapted_layers(network, pattern):
    """``(name, weight shape)`` of the Linear / Conv2d layers of a diffusers or transformers ``network``."""
    return [(name, module.weight.shape) for name, module in network.named_modules()
            if pattern.match(name) and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))]


def random_factors(shape, rank: int, generator: torch.Generator, std: float = 0.2):
    """``(down, up)`` for a weight of ``shape``: down ``(r, in, kh, kw)`` and a 1x1 up for a convolution."""
    out, inp, *kernel = shape
    down = torch.randn(rank, inp, *kernel, generator=generator) * std
    up = torch.randn(out, rank, *([1, 1] if kernel else []), generator=generator) * std
    return down, up


def kohya_lora(pipe, rank: int = 4, seed: int = 0, text_prefixes=("lora_te_",), text_encoders=None,
               alpha=lambda index: 3.0) -> dict:
    """A kohya-format LoRA with SD 1.x/2.x diffusers UNet names; ``alpha(layer index)`` (default 3, not the rank).

    diffusers 0.42.1 honours one alpha for the whole file only: per-layer alphas become PEFT
    ``alpha_pattern`` entries that match no module (its attention keys keep ``.processor.to_q_lora``),
    and it warns and ignores them. So the diffusers oracle gets one alpha; per-layer alphas are checked
    against the formula (test_lora_formula.py)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    encoders = text_encoders if text_encoders is not None else [pipe.text_encoder]
    groups = [("lora_unet_", pipe.unet, UNET_LAYERS)] + [
        (prefix + "text_model_", encoder, TEXT_LAYERS) for prefix, encoder in zip(text_prefixes, encoders)]
    for prefix, network, pattern in groups:
        for index, (name, shape) in enumerate(adapted_layers(network, pattern)):
            layer = prefix + name.removeprefix("text_model.").replace(".", "_")
            down, up = random_factors(shape, rank, g)
            state[f"{layer}.lora_down.weight"], state[f"{layer}.lora_up.weight"] = down, up
            state[f"{layer}.alpha"] = torch.tensor(float(alpha(index)))
    return state


def peft_layers(network, pattern, rank: int, generator) -> dict:
    """PEFT-named random factors (``<name>.lora_A.weight`` / ``.lora_B.weight``) for the layers of ``network``."""
    state = {}
    for name, shape in adapted_layers(network, pattern):
        down, up = random_factors(shape, rank, generator)
        state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = down, up
    return state


#: The same layers in CompVis / sgm names (kohya's SDXL files): ResBlock convs are in_layers.2 / out_layers.3.
SGM_UNET_LAYERS = re.compile(r".*(attn[12]\.to_(q|k|v|out\.0)|ff\.net\.(0\.proj|2)|proj_(in|out)|in_layers\.2|out_layers\.3)$")


def kohya_sdxl_lora(sd, pipe, rank: int = 4, seed: int = 0, alpha: float = 3.0) -> dict:
    """A kohya SDXL LoRA: sgm UNet names (read off our CompVis-named UNet), ``lora_te1_`` / ``lora_te2_``."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    groups = [("lora_unet_", sd.unet, SGM_UNET_LAYERS), ("lora_te1_text_model_", pipe.text_encoder, TEXT_LAYERS),
              ("lora_te2_text_model_", pipe.text_encoder_2, TEXT_LAYERS)]
    for prefix, network, pattern in groups:
        for name, shape in adapted_layers_any(network, pattern):
            layer = prefix + name.removeprefix("text_model.").replace(".", "_")
            down, up = random_factors(shape, rank, g)
            state[f"{layer}.lora_down.weight"], state[f"{layer}.lora_up.weight"] = down, up
            state[f"{layer}.alpha"] = torch.tensor(alpha)
    return state


def adapted_layers_any(network, pattern):
    """Like :func:`adapted_layers`, for any module with a 2-D or 4-D weight (our prepacked convolutions too)."""
    return [(name, module.weight.shape) for name, module in network.named_modules()
            if pattern.match(name) and isinstance(getattr(module, "weight", None), torch.Tensor)
            and module.weight.dim() in (2, 4)]

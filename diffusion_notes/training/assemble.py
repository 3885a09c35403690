r"""A ``StableDiffusion`` from freshly built parts, ready to train.

The parts are exactly the classes ``StableDiffusion.from_single_file`` loads (the package's
``UNetModel`` and ``AutoencoderKL``, transformers' ``CLIPTextModel``), so a trained model saves to and
loads from the original single-file layout like any SD 1.x checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.config import TEXT_SPECS, AutoencoderConfig, UNetConfig
from ..models.text import PromptEncoder
from ..models.unet import ResBlock, UNetModel
from ..models.attention import SpatialTransformer
from ..schedules import NoiseSchedule

__all__ = ["zero_init_", "build_text_encoder", "assemble_stable_diffusion"]


def zero_init_(unet: UNetModel) -> UNetModel:
    r"""Zero the layers CompVis's ``zero_module`` zeroes: every ResBlock's last convolution, every
    SpatialTransformer's ``proj_out`` and the UNet's output convolution. Each residual branch then
    starts as the identity and the untrained UNet predicts :math:`\epsilon = 0`."""
    layers = [unet.out[2]]
    for module in unet.modules():
        if isinstance(module, ResBlock):
            layers.append(module.out_layers[3])
        elif isinstance(module, SpatialTransformer):
            layers.append(module.proj_out)
    with torch.no_grad():
        for layer in layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
    return unet


def build_text_encoder(tokenizer, hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int | None = None):
    """A randomly initialised OpenAI-CLIP-style ``CLIPTextModel`` (``quick_gelu``) for ``tokenizer``:
    vocabulary and position count (``model_max_length``) from the tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, max_position_embeddings=tokenizer.model_max_length,
        hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=hidden_size,
    )
    return CLIPTextModel(config)


def assemble_stable_diffusion(unet_config: UNetConfig, vae, text_encoder, tokenizer, scale_factor: float,
                              native_size: tuple[int, int] | None = None, prediction_type: str = "eps",
                              schedule: NoiseSchedule | None = None):
    """An SD 1.x-family ``StableDiffusion`` of a fresh (zero-initialised as CompVis) UNet, the given
    autoencoder (``AutoencoderKL``, usually trained first) and text encoder + tokenizer.

    ``native_size``: the (height, width) it will be trained at, recorded in its config and files.
    ``unet_config.context_dim`` must equal the text encoder's width; the schedule defaults to SD's
    (scaled_linear, 0.00085..0.012, T = 1000). Nothing is frozen: call ``requires_grad_`` as needed.
    """
    from ..stable_diffusion import StableDiffusion, StableDiffusionConfig

    width = text_encoder.config.hidden_size
    if unet_config.context_dim != width:
        raise ValueError(f"unet_config.context_dim={unet_config.context_dim} but the text encoder is {width} wide; "
                         "they must match (the UNet cross-attends to the text features).")
    vae_config: AutoencoderConfig = vae.config
    config = StableDiffusionConfig("sd1", unet_config, vae_config, prediction_type, float(scale_factor), native_size)
    unet = zero_init_(UNetModel(unet_config))
    prompt_encoder = PromptEncoder([tokenizer], [text_encoder], TEXT_SPECS["sd1"])
    return StableDiffusion(config, unet, vae, prompt_encoder, schedule or NoiseSchedule.stable_diffusion())

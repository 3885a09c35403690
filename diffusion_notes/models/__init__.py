"""Stable Diffusion's networks with CompVis structure and parameter names (see each module)."""

from .attention import BasicTransformerBlock, CrossAttention, FeedForward, GEGLU, SpatialTransformer
from .config import AutoencoderConfig, TextEncoderSpec, UNetConfig, unet_preset, vae_preset
from .embeddings import size_embedding, timestep_embedding
from .text import PromptEncoder
from .unet import UNetModel
from .vae import AutoencoderKL, DiagonalGaussianDistribution
from .vq import VectorQuantizer

__all__ = [
    "AutoencoderConfig", "AutoencoderKL", "BasicTransformerBlock", "CrossAttention", "DiagonalGaussianDistribution",
    "FeedForward", "GEGLU", "PromptEncoder", "SpatialTransformer", "TextEncoderSpec", "UNetConfig", "UNetModel",
    "VectorQuantizer", "size_embedding", "timestep_embedding", "unet_preset", "vae_preset",
]

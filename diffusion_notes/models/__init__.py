"""Stable Diffusion's networks with CompVis structure and parameter names (see each module)."""

from .attention import BasicTransformerBlock, CrossAttention, FeedForward, GEGLU, SpatialTransformer
from .config import AutoencoderConfig, TextEncoderSpec, UNetConfig, unet_preset, vae_preset
from .embeddings import size_embedding, timestep_embedding
from .prepacked import PrepackedConv2d, prepack_convolutions, unpack_convolutions
from .text import PromptEncoder
from .unet import UNetModel
from .vae import AutoencoderKL, DiagonalGaussianDistribution
from .vq import VectorQuantizer

__all__ = [
    "AutoencoderConfig", "AutoencoderKL", "BasicTransformerBlock", "CrossAttention", "DiagonalGaussianDistribution",
    "FeedForward", "GEGLU", "PrepackedConv2d", "PromptEncoder", "SpatialTransformer", "TextEncoderSpec", "UNetConfig", "UNetModel",
    "VectorQuantizer", "prepack_convolutions", "size_embedding", "timestep_embedding", "unet_preset", "unpack_convolutions", "vae_preset",
]

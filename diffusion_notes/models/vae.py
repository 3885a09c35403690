r"""The first stage of latent diffusion: a KL-regularised autoencoder (Rombach et al. 2022, Sec. 3.1).

The encoder :math:`\mathcal E` maps an image ``(B, 3, H, W)`` in [-1, 1] to a diagonal Gaussian over
latents ``(B, 4, H/8, W/8)``; the decoder :math:`\mathcal D` maps latents back. The diffusion model
works on ``z * scale_factor`` (0.18215 for SD 1/2, 0.13025 for SDXL; kept on ``StableDiffusion``).
Names follow CompVis ``ldm/modules/diffusionmodules/model.py`` (``Encoder``, ``Decoder``) and
``ldm/models/autoencoder.py`` (``AutoencoderKL``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..noise import randn
from .attention import Normalize
from .config import AutoencoderConfig

__all__ = ["AutoencoderKL", "DiagonalGaussianDistribution", "Encoder", "Decoder"]


class DiagonalGaussianDistribution:
    r""":math:`q(z|x) = \mathcal N(\mu, \mathrm{diag}\,\sigma^2)` from ``moments = cat(mean, logvar)``."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)  # CompVis clamps so exp() stays finite
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draw :math:`\\mu + \\sigma \\odot \\epsilon` (Kingma & Welling 2014)."""
        return self.mean + self.std * randn(self.mean.shape, generator, self.mean.device, self.mean.dtype)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        r""":math:`KL(q \| \mathcal N(0, I)) = \tfrac12 \sum (\mu^2 + \sigma^2 - 1 - \log\sigma^2)` per sample."""
        return 0.5 * torch.sum(self.mean**2 + self.var - 1.0 - self.logvar, dim=[1, 2, 3])


def _swish(x: torch.Tensor) -> torch.Tensor:
    r"""Swish / SiLU :math:`x\,\sigma(x)` (CompVis ``nonlinearity`` writes ``x * torch.sigmoid(x)``; diffusers
    uses ``F.silu``). One fused kernel: the two-op form took 7% of a CPU decode, F.silu 3%."""
    return F.silu(x)


class ResnetBlock(nn.Module):
    """Two GroupNorm-swish-conv stages with a residual; ``nin_shortcut`` when channels change."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``h*w`` positions (1x1 convs ``q``, ``k``, ``v``, ``proj_out``)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, 1)
        self.k = nn.Conv2d(in_channels, in_channels, 1)
        self.v = nn.Conv2d(in_channels, in_channels, 1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        q, k, v = (conv(hn).reshape(b, 1, c, h * w).transpose(2, 3) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel right and bottom (CompVis's asymmetric padding)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    """Image -> ``2 * z_channels`` moments, downsampling by 2 at every level but the last."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = c.ch
        for level, mult in enumerate(c.ch_mult):
            down = nn.Module()
            down.block = nn.ModuleList()
            for _ in range(c.num_res_blocks):
                down.block.append(ResnetBlock(block_in, c.ch * mult))
                block_in = c.ch * mult
            down.attn = nn.ModuleList()  # SD uses no attention at these resolutions
            if level != len(c.ch_mult) - 1:
                down.downsample = Downsample(block_in)
            self.down.append(down)
        self.mid = _mid(block_in)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for down in self.down:
            for block in down.block:
                h = block(h)
            if hasattr(down, "downsample"):
                h = down.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Latents -> image. ``up[i]`` is the level at resolution ``2**i`` finer than the latents' level."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        block_in = c.ch * c.ch_mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in)
        ups = []
        for level in reversed(range(len(c.ch_mult))):
            up = nn.Module()
            up.block = nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                up.block.append(ResnetBlock(block_in, c.ch * c.ch_mult[level]))
                block_in = c.ch * c.ch_mult[level]
            up.attn = nn.ModuleList()
            if level != 0:
                up.upsample = Upsample(block_in)
            ups.insert(0, up)  # CompVis indexes up[] by level, so the coarsest level is last
        self.up = nn.ModuleList(ups)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, c.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for up in reversed(self.up):
            for block in up.block:
                h = block(h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """``encode(x) -> DiagonalGaussianDistribution``, ``decode(z) -> image`` (unscaled latents)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, sample_posterior: bool = True):
        posterior = self.encode(x)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior

r"""A small class-conditional UNet :math:`\epsilon_\theta(x_t, t, c)` for 8x8 digits.

The architecture is the DDPM UNet (Ho et al. 2020, Sec. 4 and App. B) shrunk to three resolutions
(8x8, 4x4, 2x2) with one residual block each way: GroupNorm, a sinusoidal embedding of the
timestep added inside every block, and skip connections from the down path to the up path.
Self-attention is left out: at 4x4 a 3x3 convolution already sees almost the whole image.
The channel count doubles at each lower resolution, so that most parameters sit where
convolutions are cheap; the whole network is 0.37M parameters and about 1.5 MB in float32.

The class label gets its own learned embedding, added to the timestep embedding. Label
``NULL_LABEL = 10`` is the "no label" token of classifier-free guidance (Ho & Salimans 2022):
training replaces the true label by it some of the time, so one network learns both
:math:`\epsilon_\theta(x_t, t, c)` and :math:`\epsilon_\theta(x_t, t, \varnothing)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..models.embeddings import timestep_embedding  # the same (cos, sin) embedding as Stable Diffusion's UNet
from .digits import NUM_CLASSES

__all__ = ["NULL_LABEL", "UNetConfig", "DigitsUNet", "timestep_embedding", "EDM_TIMESTEP_SCALE", "edm_network"]

#: The label that means "unconditional" (classifier-free guidance's empty condition).
NULL_LABEL = NUM_CLASSES


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild the network; saved as JSON next to the weights."""

    base_channels: int = 16  # channels at 8x8
    channel_mult: tuple[int, ...] = (1, 2, 4)  # widths at 8x8, 4x4, 2x2, in units of base_channels
    num_classes: int = NUM_CLASSES
    groups: int = 8

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        return cls(**{**d, "channel_mult": tuple(d["channel_mult"])})


class ResBlock(nn.Module):
    """Two 3x3 convolutions with the (timestep + label) embedding added in between."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # Start every block as the identity so that a deep stack trains from the first step.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]  # one shift per channel, per sample
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class DigitsUNet(nn.Module):
    r"""``model(x, t, c)`` -> predicted noise :math:`\epsilon_\theta(x_t, t, c)`, same shape as ``x``.

    x: (B, 1, 8, 8) float; t: (B,) int64 timesteps 0..T-1; c: (B,) int64 labels 0..9, or
    ``NULL_LABEL`` for the unconditional prediction.
    """

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        base, g = config.base_channels, config.groups
        emb_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(config.num_classes + 1, emb_dim)  # +1: the null label

        widths = [base * m for m in config.channel_mult]
        self.conv_in = nn.Conv2d(1, base, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = base
        for level, width in enumerate(widths):
            self.down.append(ResBlock(ch, width, emb_dim, g))
            ch = width
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = ResBlock(ch, ch, emb_dim, g)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            self.up.append(ResBlock(ch + width, width, emb_dim, g))  # + width: the skip connection
            ch = width
            if level > 0:
                self.upsample.append(nn.Conv2d(ch, widths[level - 1], 3, padding=1))
                ch = widths[level - 1]
        self.norm_out = nn.GroupNorm(g, ch)
        self.conv_out = nn.Conv2d(ch, 1, 3, padding=1)
        # Predict zero noise at initialisation; the loss then starts at E[eps^2] = 1.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels)) + self.label_emb(c)
        h = self.conv_in(x)
        skips = []
        for level, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
        h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


#: an EDM-trained digits network sees the timestep 1000 c_noise = 250 ln(sigma) (EDM Table 1's c_noise = ln(sigma) / 4,
#: scaled into the range its sinusoidal embedding was made for)
EDM_TIMESTEP_SCALE = 1000.0


def edm_network(model: DigitsUNet):
    """F_theta(x_in, c_noise, c) of an EDM-trained :class:`DigitsUNet`: the network called at timestep 1000 c_noise."""
    return lambda x_in, c_noise, c: model(x_in, EDM_TIMESTEP_SCALE * c_noise.to(x_in.dtype), c)

r"""The latent diffusion UNet :math:`\epsilon_\theta(z_t, t, \tau_\theta(y))` (Rombach et al. 2022, Eq. 3).

One class, configured (``models.config.UNetConfig``) for SD 1.x, SD 2.x and SDXL. Structure and
parameter names are CompVis's ``UNetModel`` (``ldm/modules/diffusionmodules/openaimodel.py``, itself
from Dhariwal & Nichol 2021), so the keys ``model.diffusion_model.*`` of an original checkpoint load
with the prefix stripped:

* ``time_embed``: sinusoidal embedding of ``t`` (320 numbers) -> MLP -> ``(B, 1280)``;
* ``label_emb`` (SDXL only): the ``(B, 2816)`` vector of pooled text + size/crop embeddings, added
  to the time embedding;
* ``input_blocks`` / ``middle_block`` / ``output_blocks``: ResBlocks that receive the time embedding,
  SpatialTransformers that cross-attend to ``context`` ``(B, 77, 768)``, Down/Upsample, and skip
  connections from each input block to its mirror output block;
* ``out``: GroupNorm, SiLU, 3x3 conv back to the latent channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SpatialTransformer
from .config import UNetConfig
from .embeddings import timestep_embedding

__all__ = ["UNetModel", "ResBlock", "Downsample", "Upsample", "TimestepEmbedSequential", "GroupNorm32"]


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32) computed in float32 (CompVis ``normalization``): fp16 statistics are unstable."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class ResBlock(nn.Module):
    """Residual block that adds the projected time embedding between its two convolutions."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Strided 3x3 convolution halving height and width."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to ``size`` (2x when not given), then a 3x3 convolution.

    The size is the next skip connection's: a side of 2k+1 goes down to k+1 and must come back to
    2k+1, not 2k+2. CompVis always doubles (so its UNet needs latent sides divisible by 2^levels);
    diffusers resizes to the skip, which lets any multiple of 8 pixels through. Same result otherwise.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        if size is None:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the time embedding to ResBlocks and the context to SpatialTransformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, upsample_size=None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """CompVis ``UNetModel``: ``unet(x, timesteps, context, y=None)`` -> eps (or v), shaped like ``x``.

    ``x``: ``(B, in_channels, h, w)`` latents (9 channels for inpainting models: latents, mask,
    masked-image latents); ``timesteps``: ``(B,)`` or a scalar; ``context``: ``(B, 77, context_dim)``
    prompt features; ``y``: ``(B, adm_in_channels)`` for SDXL (see ``StableDiffusion.sdxl_label``).
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        mc, ted = config.model_channels, config.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        if config.adm_in_channels is not None:
            # CompVis num_classes="sequential": an MLP inside a one-element Sequential (key label_emb.0.0).
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(config.adm_in_channels, ted), nn.SiLU(), nn.Linear(ted, ted))
            )
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(config.in_channels, mc, 3, padding=1))])
        skip_channels = self._build_input_blocks()
        ch = mc * config.channel_mult[-1]
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, ted), self._transformer(ch, config.transformer_depth_middle), ResBlock(ch, ted)
        )
        self.output_blocks = nn.ModuleList()
        self._build_output_blocks(skip_channels)
        self.out = nn.Sequential(GroupNorm32(mc), nn.SiLU(), nn.Conv2d(mc, config.out_channels, 3, padding=1))

    def _transformer(self, channels: int, depth: int) -> SpatialTransformer:
        heads, dim_head = self.config.heads_and_dim(channels)
        c = self.config
        return SpatialTransformer(channels, heads, dim_head, depth, c.context_dim, c.use_linear_in_transformer,
                                  c.upcast_attention)

    def _build_input_blocks(self) -> list[int]:
        """Encoder half; returns the channel count of every skip connection, in order."""
        c = self.config
        ch, skip_channels = c.model_channels, [c.model_channels]
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers = [ResBlock(ch, c.time_embed_dim, mult * c.model_channels)]
                ch = mult * c.model_channels
                if c.transformer_depth[level] > 0:
                    layers.append(self._transformer(ch, c.transformer_depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
        return skip_channels

    def _build_output_blocks(self, skip_channels: list[int]) -> None:
        """Decoder half: one more block per level than the encoder, each eating one skip connection."""
        c = self.config
        ch = c.model_channels * c.channel_mult[-1]
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), c.time_embed_dim, mult * c.model_channels)]
                ch = mult * c.model_channels
                if c.transformer_depth[level] > 0:
                    layers.append(self._transformer(ch, c.transformer_depth[level]))
                if level and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

    def forward(self, x: torch.Tensor, timesteps, context: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        t_emb = timestep_embedding(timesteps, self.config.model_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(t_emb)  # (B, 1280) for SD's model_channels = 320
        if self.config.adm_in_channels is not None:
            if y is None:
                raise ValueError("this UNet (SDXL) needs y=(B, adm_in_channels): pooled text + size embeddings")
            emb = emb + self.label_emb(y.to(emb.dtype))
        context = context.to(emb.dtype)
        h, skips = x.to(emb.dtype), []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb, context, upsample_size=skips[-1].shape[-2:] if skips else None)
        return self.out(h).to(x.dtype)

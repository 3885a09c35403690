r"""The transformer that lets the UNet read the prompt (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", Sec. 3.3).

Cross-attention, LDM (Rombach et al. 2022) Sec. 3.3:
:math:`\mathrm{Attention}(Q, K, V) = \mathrm{softmax}(QK^\top/\sqrt d)\,V` with
:math:`Q = W_Q\,\varphi(z_t)` from the image features and :math:`K = W_K\,\tau_\theta(y)`,
:math:`V = W_V\,\tau_\theta(y)` from the prompt features ``context`` of shape ``(B, 77, 768)``
(SD 1.x). Module and parameter names follow CompVis ``ldm/modules/attention.py`` so that an
original checkpoint's keys load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CrossAttention", "GEGLU", "FeedForward", "BasicTransformerBlock", "SpatialTransformer", "Normalize"]


def Normalize(in_channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """CompVis ``Normalize``: GroupNorm with 32 groups."""
    return nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=eps, affine=True)


class CrossAttention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None (CompVis ``CrossAttention``)."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 upcast_attention: bool = False):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.upcast_attention = upcast_attention
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(0.0))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = self._split_heads(self.to_q(x))  # queries from the image features
        k = self._split_heads(self.to_k(context))  # keys and values from the prompt (or the image: attn1)
        v = self._split_heads(self.to_v(context))
        dtype = q.dtype
        if self.upcast_attention:
            # fp16 logits QK^T overflow for SD 2.1's 64-channel heads; softmax in fp32 avoids NaNs.
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(QK^T / sqrt(d_head)) V, per head
        out = out.to(dtype).transpose(1, 2).flatten(2)
        return self.to_out(out)


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020, "GLU Variants Improve Transformer"): ``x * gelu(gate)``."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """CompVis ``FeedForward(dim, glu=True)``: GEGLU to ``4 * dim``, then back to ``dim``."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Dropout(0.0), nn.Linear(inner_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention to the prompt, feed-forward, each residual."""

    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int, upcast_attention: bool = False):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, n_heads, d_head, upcast_attention)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, upcast_attention)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


def _in_memory_format_of(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` laid out in memory as ``like`` is: NCHW, or channels-last (NHWC) when ``like`` is only that."""
    channels_last = like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous()
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class SpatialTransformer(nn.Module):
    """Transformer over the ``h*w`` positions of a feature map (CompVis ``SpatialTransformer``).

    ``proj_in``/``proj_out`` are 1x1 convolutions in SD 1.x and Linear layers in SD 2.x and SDXL
    (``use_linear``: the same map, applied after instead of before flattening).
    """

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int, context_dim: int,
                 use_linear: bool = False, upcast_attention: bool = False):
        super().__init__()
        inner_dim = n_heads * d_head
        self.use_linear = use_linear
        self.norm = Normalize(in_channels)
        self.proj_in = nn.Linear(in_channels, inner_dim) if use_linear else nn.Conv2d(in_channels, inner_dim, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, context_dim, upcast_attention) for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner_dim, in_channels) if use_linear else nn.Conv2d(inner_dim, in_channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)  # b c h w -> b (h w) c
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        # b (h w) c -> b c h w. That view has channels-last strides; CompVis calls .contiguous() here.
        # Without it every following convolution converts its weight to match (about a fifth of the
        # fp32 CPU forward of SD 1.5). The input's own layout is kept: NCHW, or channels-last on CUDA.
        x = _in_memory_format_of(x.transpose(1, 2).reshape(batch, -1, height, width), x_in)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in

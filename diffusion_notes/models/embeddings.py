r"""Sinusoidal embeddings of the timestep (and of SDXL's image sizes).

The frequencies are those of the Transformer's positional encoding (Vaswani et al. 2017,
"Attention Is All You Need", Sec. 3.5), :math:`\omega_i = 10000^{-i/(d/2)}`, but laid out as
CompVis's ``timestep_embedding`` does: all cosines first, then all sines,
``[cos(t \omega_0) .. cos(t \omega_{d/2-1}), sin(t \omega_0) .. sin(t \omega_{d/2-1})]``.
(diffusers: ``get_timestep_embedding(..., flip_sin_to_cos=True, downscale_freq_shift=0)``.)
"""

from __future__ import annotations

import math

import torch

__all__ = ["timestep_embedding", "size_embedding"]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``(N,)`` timesteps (may be fractional) -> ``(N, dim)`` float32 embedding, cos half first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def size_embedding(add_time_ids: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """SDXL's micro-conditioning (Podell et al. 2023, Sec. 2.2): ``(B, 6)`` sizes -> ``(B, 6 * dim)``.

    ``add_time_ids`` holds ``(original_h, original_w, crop_top, crop_left, target_h, target_w)``;
    each number is embedded like a timestep and the six embeddings are concatenated
    (sgm ``ConcatTimestepEmbedderND``).
    """
    batch = add_time_ids.shape[0]
    return timestep_embedding(add_time_ids.flatten(), dim).reshape(batch, -1)

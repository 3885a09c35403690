r"""Vector quantisation (van den Oord et al. 2017, "Neural Discrete Representation Learning").

Each encoder output vector :math:`z_e` is replaced by its nearest codebook entry
:math:`z_q = e_k,\ k = \arg\min_j \lVert z_e - e_j \rVert_2` (Eq. 1-2). Training uses Eq. (3):

.. math:: L = \lVert \mathrm{sg}[z_e] - e \rVert^2 + \beta\,\lVert z_e - \mathrm{sg}[e] \rVert^2

The first (codebook) term moves only the codebook, the second (commitment) term only the encoder;
the decoder's gradient skips the non-differentiable argmin by the straight-through estimator
:math:`z_q = z_e + \mathrm{sg}[z_q - z_e]`. (CompVis ``VectorQuantizer2`` in ``taming``.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VectorQuantizer"]


class VectorQuantizer(nn.Module):
    """``forward(z) -> (z_q, loss, indices)`` for ``z`` of shape ``(B, e_dim, H, W)``."""

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook row for each row of ``z_flat`` (Eq. 1)."""
        # the matmul form |z|^2 - 2 z.e + |e|^2 loses the digits that separate near ties; take the direct one
        distances = torch.cdist(z_flat, self.embedding.weight, compute_mode="donot_use_mm_for_euclid_dist")
        return distances.argmin(dim=1)

    def forward(self, z: torch.Tensor):
        b, c, h, w = z.shape
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        indices = self.nearest(z_flat.detach())
        z_q = self.embedding(indices).reshape(b, h, w, c).permute(0, 3, 1, 2)
        codebook_loss = F.mse_loss(z_q, z.detach())  # ||sg[z_e] - e||^2
        commitment_loss = F.mse_loss(z, z_q.detach())  # ||z_e - sg[e]||^2
        loss = codebook_loss + self.beta * commitment_loss
        z_q = z + (z_q - z).detach()  # straight-through: forward is z_q, gradient is identity to z
        return z_q, loss, indices.reshape(b, h, w)

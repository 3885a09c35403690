r"""LyCORIS's two other low-rank updates: LoHa (Hadamard product) and LoKr (Kronecker product).

Both replace LoRA's :math:`BA` by a structured matrix with more rank for the same parameter count,
and merge the same way (:mod:`diffusion_notes.adapters.lora`):

* **LoHa** (Hyeon-Woo et al. 2022, FedPara, Eq. 4): :math:`\Delta W = m\,\frac{\alpha}{r}\,(W_{1a}W_{1b})\odot(W_{2a}W_{2b})`,
  the element-wise product of two rank-:math:`r` products (rank up to :math:`r^2`); kohya / LyCORIS keys
  ``hada_w1_a`` ``(out, r)``, ``hada_w1_b`` ``(r, in·kh·kw)``, ``hada_w2_a``, ``hada_w2_b``.
* **LoKr** (Yeh et al. 2024, LyCORIS paper, Sec. 3.3): :math:`\Delta W = m\,\frac{\alpha}{r}\,W_1 \otimes W_2`,
  each side stored whole (``lokr_w1``, ``lokr_w2``) or as a rank-:math:`r` product (``lokr_w1_a @ lokr_w1_b``,
  ``lokr_w2_a @ lokr_w2_b``); :math:`r` = the columns of the first ``_a`` factor, and with no product
  the scale is 1. For a convolution :math:`W_2` carries the kernel ``(out_2, in_2, kh, kw)``.

Counterparts: LyCORIS ``lycoris/functional/loha.py`` / ``lokr.py`` (``diff_weight``), AUTOMATIC1111
``extensions-builtin/Lora/network_hada.py`` / ``network_lokr.py``.
"""

from __future__ import annotations

import torch

__all__ = ["loha_delta", "lokr_delta"]


def loha_delta(w1a, w1b, w2a, w2b, alpha: float | None, multiplier: float = 1.0) -> torch.Tensor:
    r"""LoHa, FedPara Eq. 4: :math:`\Delta W = m\frac{\alpha}{r}(W_{1a}W_{1b})\odot(W_{2a}W_{2b})`, ``(out, in·kh·kw)`` float32."""
    rank = w1b.shape[0]
    scale = multiplier * (1.0 if alpha is None else alpha / rank)
    first = w1a.flatten(1).float() @ w1b.flatten(1).float()
    second = w2a.flatten(1).float() @ w2b.flatten(1).float()
    return scale * first * second


def _side(whole, a, b) -> tuple[torch.Tensor, int | None]:
    """One Kronecker factor: stored whole, or rebuilt as ``a @ b`` (``b`` may carry a kernel); its rank or None."""
    if whole is not None:
        return whole.float(), None
    rank, *rest = b.shape
    return (a.float() @ b.float().reshape(rank, -1)).reshape(a.shape[0], *rest), a.shape[1]


def lokr_delta(w1, w1a, w1b, w2, w2a, w2b, alpha: float | None, multiplier: float = 1.0) -> torch.Tensor:
    r"""LoKr: :math:`\Delta W = m\frac{\alpha}{r}\,W_1\otimes W_2` (scale 1 when neither side is a product)."""
    first, rank_1 = _side(w1, w1a, w1b)
    second, rank_2 = _side(w2, w2a, w2b)
    rank = rank_1 if rank_1 is not None else rank_2
    scale = multiplier * (1.0 if alpha is None or rank is None else alpha / rank)
    while first.dim() < second.dim():  # a convolution's kernel lives in W_2
        first = first.unsqueeze(-1)
    return scale * torch.kron(first, second)

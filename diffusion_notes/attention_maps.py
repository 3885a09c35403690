r"""Which prompt tokens each latent position attends to: the cross-attention maps of a UNet, captured.

Cross-attention (LDM Sec. 3.3, Eq. 3) gives every image position a probability distribution over the
prompt's token positions,

.. math::
    P = \mathrm{softmax}\Big(\frac{QK^\top}{\sqrt d}\Big),\qquad Q = W_Q\,\varphi(z_t),\quad K = W_K\,\tau_\theta(y),

one per head, of shape ``(B, heads, h*w, n_tokens)``. :class:`~diffusion_notes.models.attention.CrossAttention`
computes :math:`PV` in one call (``F.scaled_dot_product_attention``) and never materialises :math:`P`;
:func:`capture_cross_attention` reads it from outside, with a forward hook on every ``attn2`` layer that
recomputes :math:`P` from the inputs the layer received (:func:`attention_probabilities`). The model is not
changed: the hooks are removed when the ``with`` block ends, and the layer's own output is untouched.

Counterparts: prompt-to-prompt (Hertz et al. 2022) and DAAM (Tang et al. 2023) replace the attention
processor instead; diffusers' ``AttnProcessor`` computes the same :math:`P` as ``attention_probs``
(``Attention.get_attention_scores``), the oracle of ``tests/test_attention_maps.py``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .models.attention import BasicTransformerBlock, CrossAttention

__all__ = ["attention_probabilities", "cross_attention_layers", "capture_cross_attention"]


def attention_probabilities(layer: CrossAttention, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    r""":math:`\mathrm{softmax}(QK^\top/\sqrt d)` of ``layer`` for queries from ``x`` ``(B, N, C)`` and keys from
    ``context`` ``(B, M, C')`` (``x`` itself for self-attention): ``(B, heads, N, M)``, each row summing to 1.
    The weights ``layer(x, context)`` applies to its values (LDM Eq. 3; in float32 when the layer upcasts)."""
    context = x if context is None else context
    q = layer._split_heads(layer.to_q(x))
    k = layer._split_heads(layer.to_k(context))
    if layer.upcast_attention:
        q, k = q.float(), k.float()
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)


def cross_attention_layers(unet: torch.nn.Module) -> dict[str, CrossAttention]:
    """The prompt-reading layers of a UNet, in forward order: every transformer block's ``attn2``, by module name."""
    return {f"{name}.attn2": block.attn2 for name, block in unet.named_modules() if isinstance(block, BasicTransformerBlock)}


@contextmanager
def capture_cross_attention(unet: torch.nn.Module, average_heads: bool = False):
    """``with capture_cross_attention(unet) as maps:`` records, for every call of every cross-attention layer,
    its attention probabilities ``(B, heads, h*w, n_tokens)`` (``(B, h*w, n_tokens)`` with ``average_heads``)
    in float32 on the CPU: ``maps[layer_name][k]`` is the ``k``-th call (one per UNet call, so per sampling
    step; PLMS's first step calls the UNet twice). The hooks are removed on leaving the block.

    Memory grows with every call: SD 1.5 at 512x512 holds 4096 x 77 weights per head per 64x64 layer and
    call, so capture short runs or average the heads."""
    maps: dict[str, list[torch.Tensor]] = {name: [] for name in cross_attention_layers(unet)}

    def hook_for(name):
        def hook(layer, args, kwargs, output):
            x = args[0] if args else kwargs["x"]
            context = args[1] if len(args) > 1 else kwargs.get("context")
            with torch.no_grad():
                probs = attention_probabilities(layer, x, context).float()
            maps[name].append((probs.mean(dim=1) if average_heads else probs).cpu())
        return hook

    handles = [layer.register_forward_hook(hook_for(name), with_kwargs=True)
               for name, layer in cross_attention_layers(unet).items()]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()

r"""The prompt encoder :math:`\tau_\theta(y)` (Rombach et al. 2022, Sec. 3.3): frozen CLIP text models.

The encoders themselves are transformers' ``CLIPTextModel`` / ``CLIPTextModelWithProjection``; this
module only says which hidden state each Stable Diffusion family reads (``TextEncoderSpec``):

* SD 1.x: CLIP ViT-L/14, ``last_hidden_state`` (after the final LayerNorm) -> ``(B, 77, 768)``.
  CompVis ``FrozenCLIPEmbedder``.
* SD 2.x: OpenCLIP ViT-H/14, penultimate layer then the final LayerNorm -> ``(B, 77, 1024)``.
  CompVis ``FrozenOpenCLIPEmbedder(layer="penultimate")``; stored (as diffusers does) with the unused
  last layer dropped, which makes it the ``last_hidden_state`` of a 23-layer encoder.
* SDXL: CLIP-L and OpenCLIP bigG penultimate layers *without* the final LayerNorm, concatenated
  -> ``(B, 77, 768 + 1280)``; bigG's projected pooled output ``(B, 1280)`` conditions ``label_emb``.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import TextEncoderSpec

__all__ = ["PromptEncoder", "clip_transformer", "materialize_position_ids"]


def clip_transformer(encoder: nn.Module) -> nn.Module:
    """The module holding ``embeddings`` / ``encoder`` / ``final_layer_norm`` (transformers >= 5.6 flattened it)."""
    return getattr(encoder, "text_model", encoder)


def materialize_position_ids(encoder: nn.Module) -> None:
    """Fill CLIP's non-persistent ``position_ids`` buffer after building the model on the meta device.

    Non-persistent buffers are not in any checkpoint, so ``load_state_dict(assign=True)`` leaves
    them on ``meta``; for CLIP that buffer is just ``arange(max_position_embeddings)``.
    """
    embeddings = clip_transformer(encoder).embeddings
    if embeddings.position_ids.is_meta:
        length = embeddings.position_embedding.weight.shape[0]
        device = embeddings.position_embedding.weight.device
        embeddings.register_buffer("position_ids", torch.arange(length, device=device)[None], persistent=False)


class PromptEncoder(nn.Module):
    """Prompts -> ``(context, pooled)``; ``pooled`` is None unless a spec asks for it (SDXL).

    One tokenizer per text encoder, each padding/truncating to its ``model_max_length`` (77 for every
    released model; a model trained with fewer positions has a tokenizer that says so), exactly as
    diffusers' ``encode_prompt`` does. ``forward`` runs without gradients; :meth:`encode` is the same
    computation with them, for training.
    """

    def __init__(self, tokenizers, text_encoders, specs: tuple[TextEncoderSpec, ...]):
        super().__init__()
        if not len(tokenizers) == len(text_encoders) == len(specs):
            raise ValueError("need one tokenizer and one spec per text encoder")
        self.tokenizers = list(tokenizers)
        self.text_encoders = nn.ModuleList(text_encoders)
        self.specs = tuple(specs)

    def tokenize(self, prompts: list[str], index: int = 0) -> torch.Tensor:
        tokenizer = self.tokenizers[index]
        return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids

    @staticmethod
    def _features(encoder: nn.Module, input_ids: torch.Tensor, spec: TextEncoderSpec):
        out = encoder(input_ids, output_hidden_states=True)
        hidden = out.hidden_states[-1 if spec.layer == "last" else -2]
        if spec.final_layer_norm:
            hidden = clip_transformer(encoder).final_layer_norm(hidden)
        return hidden, (out.text_embeds if spec.pooled else None)

    @torch.no_grad()
    def forward(self, prompts: str | list[str]):
        """``(context, pooled)`` for inference: no gradients (the released encoders are frozen)."""
        return self.encode(prompts)

    def encode(self, prompts: str | list[str]):
        r"""``(context, pooled)`` with gradients: the trainable path (LDM Eq. 3 optimises
        :math:`\tau_\theta` jointly with the UNet; see ``diffusion_notes.training``)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        contexts, pooled = [], None
        for index, (encoder, spec) in enumerate(zip(self.text_encoders, self.specs)):
            device = next(encoder.parameters()).device
            hidden, pooled_here = self._features(encoder, self.tokenize(prompts, index).to(device), spec)
            contexts.append(hidden)
            pooled = pooled_here if pooled_here is not None else pooled
        return torch.cat(contexts, dim=-1), pooled

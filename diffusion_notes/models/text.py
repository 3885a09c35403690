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

Two options change what is read (both default to the released behaviour):

* ``prompt_syntax="a1111"``: AUTOMATIC1111's prompts (:mod:`diffusion_notes.prompts`): 75-token chunks,
  each encoded as its own 77-token window, concatenated to ``(B, 77 k, D)`` (the UNet's cross-attention
  takes any number of context tokens), with ``(word:1.2)`` emphasis (:func:`emphasis_original`).
  SDXL's pooled vector comes from the first chunk. ``"plain"`` reads brackets as characters and cuts
  at 77 tokens, as CompVis and diffusers do.
* ``clip_skip`` (A1111's "Clip skip", 1 = the family's usual layer): read the hidden state
  ``clip_skip - 1`` layers earlier, through the same final LayerNorm where the family uses it
  (diffusers' ``clip_skip`` counts from 0: its ``clip_skip=1`` is A1111's 2).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import SettingsError
from ..prompts import a1111_chunks, empty_chunk
from .config import TextEncoderSpec

__all__ = ["PromptEncoder", "clip_transformer", "materialize_position_ids", "emphasis_original", "PROMPT_SYNTAXES"]

#: ``"plain"``: CompVis / diffusers (brackets are characters, 77 tokens); ``"a1111"``: AUTOMATIC1111's.
PROMPT_SYNTAXES = ("plain", "a1111")


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


def emphasis_original(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r"""A1111's "Original" emphasis: scale each token's features by its weight, then rescale so the
    chunk's mean is unchanged: :math:`z' = w \odot z \cdot \frac{\overline{z}}{\overline{w \odot z}}`
    (``sd_emphasis.EmphasisOriginal``), the mean taken over one prompt's chunk ``(77, D)``.

    ``z``: ``(B, 77, D)``; ``weights``: ``(B, 77)``. A1111 takes the mean over its whole batch, which is
    the same for the single prompt per call it usually encodes. A chunk whose weights are all 1 is returned
    as it is (the formula's value, without the rounding of dividing two means, which for a chunk whose mean
    is about 0, as after a LayerNorm without bias, could even be 0 / 0)."""
    original_mean = z.mean(dim=(1, 2), keepdim=True)
    weighted = z * weights[..., None].to(z.dtype)
    plain = (weights == 1).all(dim=1)[:, None, None]
    return torch.where(plain, z, weighted * (original_mean / weighted.mean(dim=(1, 2), keepdim=True)))


def _check_options(prompt_syntax: str, clip_skip: int, min_chunks: int) -> None:
    if prompt_syntax not in PROMPT_SYNTAXES:
        raise SettingsError("prompt_syntax", f"prompt_syntax must be one of {PROMPT_SYNTAXES}, not {prompt_syntax!r}.")
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 1:
        raise SettingsError("clip_skip", f"clip_skip counts layers from 1 (= the usual one), not {clip_skip!r}.")
    if isinstance(min_chunks, bool) or not isinstance(min_chunks, int) or min_chunks < 1:
        raise SettingsError("min_chunks", f"min_chunks must be a positive integer, not {min_chunks!r}.")


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
        #: ``{word: "word word_1 ..."}``: multi-vector textual-inversion words (``adapters.textual_inversion``)
        self.word_expansions: dict[str, str] = {}

    def tokenize(self, prompts: list[str], index: int = 0) -> torch.Tensor:
        tokenizer = self.tokenizers[index]
        return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids

    @staticmethod
    def _features(encoder: nn.Module, input_ids: torch.Tensor, spec: TextEncoderSpec, clip_skip: int = 1):
        out = encoder(input_ids, output_hidden_states=True)
        usual = -1 if spec.layer == "last" else -2
        hidden = out.hidden_states[usual - (clip_skip - 1)]
        if spec.final_layer_norm:
            hidden = clip_transformer(encoder).final_layer_norm(hidden)
        return hidden, (out.text_embeds if spec.pooled else None)

    def expand_words(self, prompt: str) -> str:
        """``prompt`` with each multi-vector embedding word spelled as all its tokens (diffusers' ``maybe_convert_prompt``)."""
        for word, tokens in self.word_expansions.items():
            prompt = re.sub(re.escape(word) + r"(?!_\d)", lambda _: tokens, prompt)
        return prompt

    def a1111_chunks(self, prompts: list[str], index: int = 0, min_chunks: int = 1):
        """Per prompt, its A1111 chunks for tokenizer ``index``, all padded with empty chunks to the same count."""
        tokenizer = self.tokenizers[index]
        chunks = [a1111_chunks(tokenizer, prompt) for prompt in prompts]
        count = max([min_chunks] + [len(c) for c in chunks])
        return [c + [empty_chunk(tokenizer)] * (count - len(c)) for c in chunks]

    def count_chunks(self, prompts: str | list[str]) -> int:
        """How many 75-token chunks the longest of ``prompts`` needs in A1111's syntax: encode the prompts and
        the negative prompts with ``min_chunks`` = the larger count, and their contexts have the same length."""
        prompts = [self.expand_words(p) for p in ([prompts] if isinstance(prompts, str) else prompts)]
        return max(len(chunks[0]) for chunks in (self.a1111_chunks(prompts, i) for i in range(len(self.tokenizers))))

    @torch.no_grad()
    def forward(self, prompts: str | list[str], *, prompt_syntax: str = "plain", clip_skip: int = 1,
                min_chunks: int = 1):
        """``(context, pooled)`` for inference: no gradients (the released encoders are frozen). Options: :meth:`encode`."""
        return self.encode(prompts, prompt_syntax=prompt_syntax, clip_skip=clip_skip, min_chunks=min_chunks)

    def encode(self, prompts: str | list[str], *, prompt_syntax: str = "plain", clip_skip: int = 1,
               min_chunks: int = 1):
        r"""``(context, pooled)`` with gradients: the trainable path (LDM Eq. 3 optimises
        :math:`\tau_\theta` jointly with the UNet; see ``diffusion_notes.training``).

        ``prompt_syntax``: ``"plain"`` (default) or ``"a1111"`` (module doc); ``clip_skip``: A1111's
        numbering, 1 = the family's usual layer; ``min_chunks`` (``"a1111"`` only): pad every prompt
        to at least this many chunks (see :meth:`count_chunks`), so the context is ``(B, 77 k, D)``."""
        _check_options(prompt_syntax, clip_skip, min_chunks)
        prompts = [self.expand_words(p) for p in ([prompts] if isinstance(prompts, str) else prompts)]
        contexts, pooled = [], None
        for index, (encoder, spec) in enumerate(zip(self.text_encoders, self.specs)):
            device = next(encoder.parameters()).device
            if prompt_syntax == "plain":
                hidden, pooled_here = self._features(encoder, self.tokenize(prompts, index).to(device), spec, clip_skip)
            else:
                hidden, pooled_here = self._encode_chunks(encoder, spec, self.a1111_chunks(prompts, index, min_chunks),
                                                          clip_skip, device)
            contexts.append(hidden)
            pooled = pooled_here if pooled_here is not None else pooled
        return torch.cat(contexts, dim=-1), pooled

    def _encode_chunks(self, encoder, spec, chunks, clip_skip: int, device):
        """Each chunk position through the encoder as its own 77-token batch, emphasis applied, then
        concatenated along the tokens; the pooled vector from the first chunk (A1111 ``forward``)."""
        hiddens, pooled = [], None
        for position in range(len(chunks[0])):
            ids = torch.tensor([c[position].ids for c in chunks], device=device)
            weights = torch.tensor([c[position].weights for c in chunks], device=device)
            hidden, pooled_here = self._features(encoder, ids, spec, clip_skip)
            hiddens.append(emphasis_original(hidden, weights))
            pooled = pooled_here if position == 0 else pooled
        return torch.cat(hiddens, dim=1), pooled

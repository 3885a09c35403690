r"""Textual inversion: new words whose token embeddings were learned (Gal et al. 2022).

Textual inversion (Gal et al. 2022, Eq. 2) learns, for a placeholder word :math:`S_*`, the vectors
:math:`v_*` that replace its row of CLIP's token-embedding table, with every network frozen. Loading
one is therefore: add the word to the tokenizer, add its row(s) to the embedding table. An embedding of
``n`` vectors becomes ``n`` tokens ``name``, ``name_1``, ..., ``name_{n-1}``, and the prompt word ``name``
is read as all of them (diffusers' convention, ``maybe_convert_prompt``).

The files (their keys decide the format):

* AUTOMATIC1111 ``.pt``: ``{"string_to_param": {"*": (n, D)}, "name": ..., "step": ...}``, read with
  ``torch.load(weights_only=True)`` (:mod:`diffusion_notes.checkpoints.io`: nothing in a pickle runs);
  A1111 ``.safetensors``: ``{"emb_params": (n, D)}``;
* diffusers ``learned_embeds.safetensors`` / ``.bin``: ``{token: (D,) or (n, D)}``;
* SDXL: ``{"clip_l": (n, 768), "clip_g": (n, 1280)}``, one table per text encoder.

Counterparts: diffusers ``TextualInversionLoaderMixin.load_textual_inversion``, A1111
``modules/textual_inversion/textual_inversion.py`` (``EmbeddingDatabase.load_from_file``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..checkpoints.io import _read_pickle, _sniff, load_state_dict
from ..errors import CheckpointError
from .lora import sha256_of_file, sha256_of_tensors

__all__ = ["read_embedding", "load_textual_inversion", "used_embeddings", "check_embedding_file"]

#: SDXL files name their two tables after the encoders (index in ``sd.text_encoders``).
_SDXL_KEYS = ("clip_l", "clip_g")


def _tensors(path: Path) -> dict:
    kind = _sniff(path)
    if kind == "safetensors":
        return load_state_dict(path)
    loaded = _read_pickle(path, "cpu", zipped=kind == "zip")
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path}: holds a {type(loaded).__name__}, not an embedding dictionary.")
    return loaded


def read_embedding(path_or_dict, family: str) -> tuple[list[torch.Tensor], str | None]:
    """``([vectors per text encoder], token named in the file or None)``; each ``(n, D)`` float32."""
    where = "embedding" if isinstance(path_or_dict, dict) else str(path_or_dict)
    data = dict(path_or_dict) if isinstance(path_or_dict, dict) else _tensors(Path(os.fspath(path_or_dict)))
    token = None
    if family == "sdxl":
        if not all(k in data for k in _SDXL_KEYS):
            raise CheckpointError(f"{where}: an SDXL embedding needs 'clip_l' and 'clip_g' tables; it has "
                                  f"{', '.join(map(str, list(data)[:4]))}.")
        tables = [data[k] for k in _SDXL_KEYS]
    elif "string_to_param" in data:  # A1111 .pt
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise CheckpointError(f"{where}: 'string_to_param' should hold one tensor.")
        tables = [next(iter(params.values()))]
    elif "emb_params" in data:  # A1111 .safetensors
        tables = [data["emb_params"]]
    elif len(data) == 1 and isinstance(next(iter(data.values())), torch.Tensor):  # diffusers {token: vector}
        token, table = next(iter(data.items()))
        tables = [table]
    else:
        raise CheckpointError(f"{where}: not a textual-inversion embedding (keys: {', '.join(map(str, list(data)[:4]))}).")
    vectors = []
    for table in tables:
        if not isinstance(table, torch.Tensor) or table.dim() not in (1, 2) or not table.is_floating_point():
            raise CheckpointError(f"{where}: embedding vectors must be a float (D,) or (n, D) tensor.")
        table = table.detach().float().reshape(-1, table.shape[-1])
        if not torch.isfinite(table).all():
            raise CheckpointError(f"{where}: the embedding holds NaN or inf.")
        vectors.append(table)
    return vectors, token


def check_embedding_file(path) -> None:
    """Read an embedding file and check it is one of the formats above (any family: SDXL's two tables or
    one table), before a model is loaded (the command line's ``--embedding``); :class:`CheckpointError` if not."""
    path = Path(os.fspath(path))
    data = _tensors(path)
    try:
        read_embedding(data, "sdxl" if all(k in data for k in _SDXL_KEYS) else "sd1")
    except CheckpointError as error:
        raise CheckpointError(str(error).replace("embedding:", f"{path}:", 1)) from None


def load_textual_inversion(sd, path_or_dict, token: str | None = None) -> list[str]:
    """Add the embedding's word to every tokenizer and its vectors to every text encoder of ``sd``.

    ``token`` defaults to the token named in a diffusers file, else the file's stem. Returns the tokens
    added (``[token, token_1, ...]``). A width that is not the encoder's, a token the tokenizer already
    knows, or a file that is no embedding raises :class:`CheckpointError` (before anything changes)."""
    vectors, named = read_embedding(path_or_dict, sd.family)
    if token is None:
        token = named or (Path(os.fspath(path_or_dict)).stem if not isinstance(path_or_dict, dict) else None)
    if not token:
        raise CheckpointError("a textual-inversion embedding given as a dict needs token=.")
    if len(vectors) != len(sd.text_encoders):
        raise CheckpointError(f"embedding {token!r} has {len(vectors)} table(s); this {sd.family} model has "
                              f"{len(sd.text_encoders)} text encoder(s).")
    count = vectors[0].shape[0]
    tokens = [token] + [f"{token}_{i}" for i in range(1, count)]
    for tokenizer, encoder, table in zip(sd.tokenizers, sd.text_encoders, vectors):
        width = encoder.get_input_embeddings().weight.shape[1]
        if table.shape[1] != width or table.shape[0] != count:
            raise CheckpointError(f"embedding {token!r}: vectors of width {table.shape[1]}, the text encoder's "
                                  f"are {width} (an embedding for another model family?).")
        known = [t for t in tokens if t in tokenizer.get_vocab()]
        if known:
            raise CheckpointError(f"embedding token {known[0]!r} is already in the tokenizer's vocabulary; "
                                  "load it with another token=.")
    for tokenizer, encoder, table in zip(sd.tokenizers, sd.text_encoders, vectors):
        tokenizer.add_tokens(tokens)
        ids = tokenizer.convert_tokens_to_ids(tokens)
        rows = encoder.get_input_embeddings().weight.shape[0]
        if max(ids) >= rows:  # never shrink a table larger than the tokenizer (diffusers resizes to len(tokenizer))
            encoder.resize_token_embeddings(max(ids) + 1)
        embeddings = encoder.get_input_embeddings()
        with torch.no_grad():
            embeddings.weight[ids] = table.to(embeddings.weight.device, embeddings.weight.dtype)
    if count > 1:
        sd.prompt_encoder.word_expansions[token] = " ".join(tokens)
    digest = (sha256_of_tensors({k: v for k, v in path_or_dict.items() if isinstance(v, torch.Tensor)})
              if isinstance(path_or_dict, dict) else sha256_of_file(Path(os.fspath(path_or_dict))))
    vars(sd).setdefault("_embeddings", {})[token] = digest
    return tokens


def used_embeddings(sd, texts: list[str]) -> list[tuple[str, str]]:
    """``(token, short hash)`` of every embedding loaded into ``sd`` whose word occurs in ``texts`` (the
    prompts and negative prompts given to the text encoder), for AUTOMATIC1111's ``TI hashes`` field:
    the first 12 hex digits of the sha256 of the embedding's file (``modules/textual_inversion/
    textual_inversion.py``, ``Embedding.set_hash``)."""
    loaded = vars(sd).get("_embeddings", {})
    return [(token, digest[:12]) for token, digest in loaded.items()
            if any(re.search(rf"(?<!\w){re.escape(token)}(?!\w)", text) for text in texts)]

"""Exercises of ``notebooks/exercises/06_adapters.ipynb``: merging a LoRA with its alpha (Hu et al. 2021,
Eq. 3), encoding a long prompt in 75-token chunks (AUTOMATIC1111), and looking up a new word's
textual-inversion vectors in an extended token-embedding table (Gal et al. 2022)."""

from __future__ import annotations

import torch

from .cases import gen
from .harness import F64, Exercise, register

#: The names of this module's exercises, in the notebook's order.
ADAPTER_EXERCISES = ("lora_merge", "encode_long_prompt", "embed_with_new_word")

# --------------------------------------------------------------------------------------------
# merging a LoRA (Hu et al. 2021, Eq. 3; kohya's alpha)


def _lora_ref(W, down, up, alpha, multiplier):
    rank = down.shape[0]
    scale = multiplier * (1.0 if alpha is None else alpha / rank)
    return W + scale * (up.flatten(1) @ down.flatten(1)).reshape(W.shape)


def _lora_cases():
    cases = []
    for k, (label, out, inp, rank, kernel, alpha, multiplier) in enumerate([
        ("Linear 6x5, rank 2, alpha 1", 6, 5, 2, None, 1.0, 1.0),
        ("Linear 8x8 (square, like to_q), rank 4, no alpha stored", 8, 8, 4, None, None, 0.7),
        ("3x3 convolution (LoCon) 6x4x3x3, rank 3, alpha 1.5", 6, 4, 3, 3, 1.5, 1.0),
        ("Linear 8x8, rank 2, alpha 8, multiplier -0.5", 8, 8, 2, None, 8.0, -0.5),
    ]):
        g = gen(900 + k)
        tail = (kernel, kernel) if kernel else ()
        W = torch.randn(out, inp, *tail, generator=g, dtype=F64)
        down = torch.randn(rank, inp, *tail, generator=g, dtype=F64)
        up = torch.randn(out, rank, *((1, 1) if kernel else ()), generator=g, dtype=F64)
        cases.append((f"{label}, multiplier {multiplier}", dict(W=W, down=down, up=up, alpha=alpha, multiplier=multiplier)))
    return cases


def _lora_variant(W, down, up, alpha, multiplier, kind):
    rank = down.shape[0]
    a = rank if alpha is None else alpha
    product = (up.flatten(1) @ down.flatten(1)).reshape(W.shape)
    if kind == "no_alpha":
        return W + multiplier * product
    if kind == "r_over_alpha":
        return W + multiplier * rank / a * product
    if kind == "alpha_only":
        return W + multiplier * a * product
    if kind == "no_multiplier":
        return W + a / rank * product
    if kind == "none_as_one":
        return W + multiplier * (1.0 if alpha is None else alpha) / rank * product
    if kind == "transposed":  # A^T B^T = (BA)^T, which fits a square weight
        return W + multiplier * a / rank * (down.flatten(1).T @ up.flatten(1).T).reshape(W.shape)
    raise ValueError(kind)


register(
    Exercise(
        name="lora_merge",
        signature="(W, down, up, alpha, multiplier) -> W + multiplier * alpha / r * up @ down",
        reference=_lora_ref,
        cases=_lora_cases,
        rtol=1e-9,
        mistakes=[
            (lambda **kw: _lora_variant(**kw, kind="no_alpha"), "the product B A is scaled by alpha / r (Hu et al. Sec. 4.1; kohya stores alpha per layer): W + multiplier * (alpha / r) * up @ down."),
            (lambda **kw: _lora_variant(**kw, kind="r_over_alpha"), "the scale is alpha / r, not r / alpha."),
            (lambda **kw: _lora_variant(**kw, kind="alpha_only"), "divide alpha by the rank r = down.shape[0]: the scale is alpha / r."),
            (lambda **kw: _lora_variant(**kw, kind="none_as_one"), "no alpha in the file (alpha None) means alpha = r, a scale of 1, not alpha = 1."),
            (lambda **kw: _lora_variant(**kw, kind="no_multiplier"), "the user's multiplier (<lora:name:m>, lora_scale) multiplies the whole update too."),
            (lambda **kw: _lora_variant(**kw, kind="transposed"), "that is the transpose of B A: Delta W = up @ down, shape (out, r) @ (r, in) = (out, in), as W."),
        ],
        hint="Delta W = multiplier * (alpha / r) * B A, in that order (up @ down; down @ up does not even fit), with B = up (out, r[, 1, 1]), A = down (r, in[, kh, kw]), r = down.shape[0], "
             "alpha None meaning alpha = r. For a convolution multiply the flattened factors (up.flatten(1) @ down.flatten(1)) "
             "and reshape to W.shape.",
    )
)

# --------------------------------------------------------------------------------------------
# a long prompt in 75-token chunks (AUTOMATIC1111's sd_hijack_clip)

VOCAB_SIZE, BOS, EOS, WIDTH = 50, 48, 49, 6


def toy_text_encoder(seed: int = 0):
    """A deterministic stand-in for CLIP's text encoder: (n, 77) token ids -> (n, 77, 6) float64 features,
    each position the running mean of token + position embeddings up to it (causal, as CLIP's attention mask)."""
    g = gen(seed)
    table = torch.randn(VOCAB_SIZE, WIDTH, generator=g, dtype=F64)
    positions = torch.randn(77, WIDTH, generator=g, dtype=F64)

    def encode(input_ids):
        input_ids = torch.as_tensor(input_ids)
        if input_ids.dim() != 2 or input_ids.shape[1] != 77:
            raise ValueError(f"the text encoder reads (n, 77) token ids, got shape {tuple(input_ids.shape)}")
        h = table[input_ids] + positions
        return h.cumsum(dim=1) / torch.arange(1, 78, dtype=F64)[:, None]

    encode.__name__ = "encode"
    return encode


def _chunks(ids, window=75):
    return [ids[i:i + window] for i in range(0, len(ids), window)] or [[]]


def _long_ref(token_ids, encode, bos_id, eos_id, pad_id):
    rows = [[bos_id] + c + [eos_id] + [pad_id] * (75 - len(c)) for c in _chunks(list(token_ids))]
    features = encode(torch.tensor(rows))
    return features.reshape(-1, features.shape[-1])


def _long_cases():
    cases = []
    encode = toy_text_encoder()
    for k, (n, pad, label) in enumerate([(30, EOS, "30 tokens: one chunk, padded with <end> (SD 1.x)"),
                                         (100, EOS, "100 tokens: two chunks"),
                                         (75, EOS, "exactly 75 tokens: still one chunk"),
                                         (160, 0, "160 tokens: three chunks, padded with 0 (SD 2.x's '!')")]):
        ids = torch.randint(1, BOS, (n,), generator=gen(950 + k)).tolist()
        cases.append((label, dict(token_ids=ids, encode=encode, bos_id=BOS, eos_id=EOS, pad_id=pad)))
    return cases


def _long_one_bos(token_ids, encode, bos_id, eos_id, pad_id):
    sequence = [bos_id] + list(token_ids) + [eos_id]
    rows = [sequence[i:i + 77] for i in range(0, len(sequence), 77)]
    rows[-1] = rows[-1] + [pad_id] * (77 - len(rows[-1]))
    features = encode(torch.tensor(rows))
    return features.reshape(-1, features.shape[-1])


def _long_truncated(token_ids, encode, bos_id, eos_id, pad_id):
    return _long_ref(list(token_ids)[:75], encode, bos_id, eos_id, pad_id)


def _long_extra_chunk(token_ids, encode, bos_id, eos_id, pad_id):
    ids = list(token_ids)
    chunks = [ids[i * 75:(i + 1) * 75] for i in range(len(ids) // 75 + 1)]
    rows = [[bos_id] + c + [eos_id] + [pad_id] * (75 - len(c)) for c in chunks]
    features = encode(torch.tensor(rows))
    return features.reshape(-1, features.shape[-1])


def _long_eos_padding(token_ids, encode, bos_id, eos_id, pad_id):
    return _long_ref(token_ids, encode, bos_id, eos_id, eos_id)


register(
    Exercise(
        name="encode_long_prompt",
        signature="(token_ids, encode, bos_id, eos_id, pad_id) -> context (77 k, D)",
        reference=_long_ref,
        cases=_long_cases,
        rtol=1e-9,
        mistakes=[
            (_long_one_bos, "one <start> for the whole prompt cut into 77-token windows: every chunk is its own CLIP call and needs its own <start> ... <end> (75 prompt tokens per chunk)."),
            (_long_truncated, "the prompt was truncated to 75 tokens (what CompVis and diffusers do); encode EVERY 75-token chunk and concatenate the features along the sequence."),
            (_long_extra_chunk, "a prompt of exactly 75 tokens (or 150, ...) needs no extra empty chunk: ceil(n / 75) chunks, and one chunk for an empty prompt."),
            (_long_eos_padding, "pad with pad_id (SD 2.x pads with 0, OpenCLIP's '!'), not with eos_id; only SD 1.x's pad_id is <end> itself."),
        ],
        hint="split token_ids into chunks of 75; each chunk becomes [bos_id] + chunk + [eos_id] + [pad_id] * (75 - len(chunk)) "
             "(77 ids); run encode on the (k, 77) batch and reshape (k, 77, D) -> (77 k, D).",
    )
)

# --------------------------------------------------------------------------------------------
# a textual-inversion word in the token-embedding table (Gal et al. 2022)

_WORDS = ("a", "handwritten", "seven", "the", "digit", "of", "drawing", "picture", "<|startoftext|>", "<|endoftext|>")


def _vocab() -> dict[str, int]:
    return {word: i for i, word in enumerate(_WORDS)}  # <|startoftext|>, <|endoftext|> last, as in CLIP's vocabulary


def _embed_ref(words, vocab, table, new_word, new_vectors):
    size, count = table.shape[0], new_vectors.shape[0]
    extended = torch.cat([table, new_vectors])
    ids = []
    for word in words:
        ids += list(range(size, size + count)) if word == new_word else [vocab[word]]
    ids = torch.tensor(ids)
    return ids, extended[ids]


def _embed_cases():
    cases = []
    for k, (words, count, label) in enumerate([
        ("<|startoftext|> a handwritten boldface <|endoftext|>", 1, "one new vector"),
        ("<|startoftext|> boldface the digit boldface <|endoftext|>", 1, "the new word twice"),
        ("<|startoftext|> a drawing of boldface seven <|endoftext|>", 3, "an embedding of 3 vectors"),
        ("<|startoftext|> a picture of the digit seven <|endoftext|>", 2, "a prompt without the new word"),
    ]):
        g = gen(980 + k)
        table = torch.randn(len(_WORDS), 4, generator=g, dtype=F64)
        cases.append((label, dict(words=words.split(), vocab=_vocab(), table=table, new_word="boldface",
                                  new_vectors=torch.randn(count, 4, generator=g, dtype=F64))))
    return cases


def _embed_variant(words, vocab, table, new_word, new_vectors, kind):
    size, count = table.shape[0], new_vectors.shape[0]
    if kind == "overwrite":  # the new rows put over the last existing ones
        first, extended = size - count, torch.cat([table[:size - count], new_vectors])
    elif kind == "off_by_one":  # the first new id taken as len(vocab) - 1
        first, extended = size - 1, torch.cat([table[:size - 1], new_vectors])
    else:
        first, extended = size, torch.cat([table, new_vectors])
    ids = []
    for word in words:
        if word != new_word:
            ids.append(vocab[word])
        elif kind == "one_position":
            ids.append(first)
        else:
            ids += list(range(first, first + count))
    ids = torch.tensor(ids)
    embeddings = extended[ids]
    if kind == "first_vector":
        embeddings = torch.stack([new_vectors[0] if int(i) >= size else extended[i] for i in ids])
    return ids, embeddings


register(
    Exercise(
        name="embed_with_new_word",
        signature="(words, vocab, table, new_word, new_vectors) -> (ids, embeddings)",
        reference=_embed_ref,
        cases=_embed_cases,
        rtol=1e-12,
        mistakes=[
            (lambda **kw: _embed_variant(**kw, kind="off_by_one"), "off by one: ids count from 0, so the existing tokens are 0 .. V-1 and the first new id is V = len(vocab); V - 1 is <|endoftext|>, which you overwrote."),
            (lambda **kw: _embed_variant(**kw, kind="overwrite"), "extend the vocabulary, never overwrite it: the new word's rows go AFTER the existing ones (torch.cat([table, new_vectors])), ids V, V+1, ...; the last rows are real tokens such as <|endoftext|>."),
            (lambda **kw: _embed_variant(**kw, kind="one_position"), "an embedding of n vectors takes n positions in the prompt: the word becomes n tokens, ids V .. V+n-1."),
            (lambda **kw: _embed_variant(**kw, kind="first_vector"), "each of the word's n positions has its own vector: position i of the word reads row V + i."),
        ],
        hint="append the new vectors to the table (torch.cat([table, new_vectors]), so the word's n tokens get ids V .. V+n-1 "
             "with V = len(table), as tokenizer.add_tokens appends them); replace every occurrence of new_word by its n ids, "
             "every other word by vocab[word]; the embeddings are the extended table's rows at those ids.",
    )
)

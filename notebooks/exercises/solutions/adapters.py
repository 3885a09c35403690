"""Reference solutions to notebooks/exercises/06_adapters.ipynb (kept apart from the exercises).

Each function is written from the formula, the way a student would write it, without calling the
library. ``tests/test_exercises_adapters.py`` runs every checker on these.
"""

import torch


# --- 25. merging a LoRA -------------------------------------------------------------------


def lora_merge(W, down, up, alpha, multiplier):
    r = down.shape[0]
    if alpha is None:
        alpha = r
    delta = up.reshape(up.shape[0], r) @ down.reshape(r, -1)  # B A on flattened kernels
    return W + multiplier * alpha / r * delta.reshape(W.shape)


# --- 26. a long prompt in 75-token chunks -------------------------------------------------


def encode_long_prompt(token_ids, encode, bos_id, eos_id, pad_id):
    chunks = [token_ids[i:i + 75] for i in range(0, len(token_ids), 75)] or [[]]
    rows = [[bos_id] + chunk + [eos_id] + [pad_id] * (75 - len(chunk)) for chunk in chunks]
    features = encode(torch.tensor(rows))  # (k, 77, D)
    return features.reshape(-1, features.shape[-1])


# --- 27. a new word in the token-embedding table ------------------------------------------


def embed_with_new_word(words, vocab, table, new_word, new_vectors):
    first = len(table)  # the tokenizer appends the new tokens: ids V, V+1, ...
    new_ids = list(range(first, first + len(new_vectors)))
    extended = torch.cat([table, new_vectors])
    ids = []
    for word in words:
        ids += new_ids if word == new_word else [vocab[word]]
    ids = torch.tensor(ids)
    return ids, extended[ids]

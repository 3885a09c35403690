r"""A CLIP tokenizer for a fixed word list, in the standard format (``vocab.json`` + ``merges.txt``).

CLIP's tokenizer (Radford et al. 2021; transformers ``CLIPTokenizer``) is byte-pair encoding: a word
is split into characters, the last one marked ``</w>`` (end of word), and the ranked merges of
``merges.txt`` are applied, lowest rank first, until none applies; each resulting symbol is looked
up in ``vocab.json``. OpenAI's file has 48,894 merges learned from web text. For a small closed
vocabulary we can *write* the merges instead of learning them: for every word, the chain
``w[0] w[1]``, ``w[0]w[1] w[2]``, ... ending in ``...w[-1]</w>``, which turns the word into one token.
Characters (and ``char</w>``) stay in the vocabulary, so any other lower-case word still tokenizes,
letter by letter. The result is a real CLIP tokenizer: transformers' ``CLIPTokenizer`` loads it
with ``from_pretrained(folder)``, and a ``StableDiffusion`` saves it like any other.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

__all__ = ["BOS", "EOS", "ALPHABET", "word_merges", "write_word_tokenizer", "build_word_tokenizer"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
#: Characters every word-list tokenizer knows on their own (CLIP lower-cases and splits digits apart).
ALPHABET = string.ascii_lowercase + string.digits + ".,!?'-"


def word_merges(word: str) -> list[tuple[str, str]]:
    """The merge chain that turns ``word`` into the single symbol ``word + "</w>"``.

    ``"seven"`` -> ``[("s", "e"), ("se", "v"), ("sev", "e"), ("seve", "n</w>")]``.
    """
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    merges, head = [], symbols[0]
    for symbol in symbols[1:]:
        merges.append((head, symbol))
        head += symbol
    return merges


def write_word_tokenizer(words, folder, model_max_length: int = 77) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and transformers' config files for ``words`` to ``folder``.

    Token ids: the characters of :data:`ALPHABET`, then each of them with ``</w>``, then every merge
    result in order, then ``<|startoftext|>`` and ``<|endoftext|>`` last (as in OpenAI's file, where
    they are 49406 and 49407). ``<|endoftext|>`` also pads (SD 1.x's convention).
    """
    from transformers import CLIPTokenizer

    words = list(dict.fromkeys(w.lower() for w in words))
    bad = [w for w in words if not w or any(ch not in ALPHABET for ch in w)]
    if bad:
        raise ValueError(f"words may use only the characters {ALPHABET!r}; got {bad[:3]}")
    merges = list(dict.fromkeys(m for w in words if len(w) > 1 for m in word_merges(w)))
    tokens = list(ALPHABET) + [ch + "</w>" for ch in ALPHABET] + ["".join(m) for m in merges] + [BOS, EOS]
    tokens = list(dict.fromkeys(tokens))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=model_max_length, pad_token=EOS)
    tokenizer.save_pretrained(str(folder))  # tokenizer_config.json, special_tokens_map.json
    return folder


def build_word_tokenizer(words, folder, model_max_length: int = 77):
    """:func:`write_word_tokenizer`, then load it back with ``CLIPTokenizer.from_pretrained``; every word of
    ``words`` is checked to be one token (a ``ValueError`` names any that is not)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(write_word_tokenizer(words, folder, model_max_length)))
    split = [w for w in words if len(tokenizer(w, add_special_tokens=False).input_ids) != 1]
    if split:
        raise ValueError(f"these words did not become single tokens: {split[:5]}")
    return tokenizer

"""The word-list CLIP tokenizer is a real CLIP tokenizer.

Oracles: transformers' slow ``CLIPTokenizer`` (Python BPE) and the Rust ``tokenizers`` implementation
behind ``CLIPTokenizerFast``, both reading our ``vocab.json`` / ``merges.txt``; and the BPE rule
itself, applied by hand to a word outside the list.
"""

from __future__ import annotations

import json

import pytest

from diffusion_notes.mini_sd.data import WORDS, all_captions
from diffusion_notes.training.tokenizer import ALPHABET, EOS, build_word_tokenizer, word_merges


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    build_word_tokenizer(WORDS, path)
    return path


def test_every_word_is_one_token_and_slow_and_fast_tokenizers_agree(folder):
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    slow = CLIPTokenizer.from_pretrained(str(folder))
    fast = CLIPTokenizerFast.from_pretrained(str(folder))  # the Rust BPE, an independent implementation
    vocab = json.loads((folder / "vocab.json").read_text())
    for word in WORDS:
        assert slow.tokenize(word) == [word + "</w>"]
    prompts = [c for label in range(10) for c in all_captions(label)] + ["a handwritten 42", "hello world", ""]
    for prompt in prompts:
        ids = slow(prompt, padding="max_length", max_length=77).input_ids
        assert ids == fast(prompt, padding="max_length", max_length=77).input_ids
        assert len(ids) == 77 and ids[0] == vocab["<|startoftext|>"] and ids[-1] == vocab[EOS]  # pads with EOS


def test_unknown_words_fall_back_to_letters(folder):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    # "xyz" has no merges: BPE leaves its characters, the last one marked end-of-word.
    assert tokenizer.tokenize("xyz") == ["x", "y", "z</w>"]
    # CLIP lower-cases and splits numerals into single digits.
    assert tokenizer.tokenize("SEVEN 42") == ["seven</w>", "4</w>", "2</w>"]
    assert all(ch in tokenizer.get_vocab() and ch + "</w>" in tokenizer.get_vocab() for ch in ALPHABET)


def test_merge_chain_and_bad_words():
    assert word_merges("seven") == [("s", "e"), ("se", "v"), ("sev", "e"), ("seve", "n</w>")]
    with pytest.raises(ValueError, match="characters"):
        build_word_tokenizer(["café"], "/tmp/never-written-tokenizer")


def test_the_miniature_tests_run_on_one_torch_thread():
    import torch

    # Guards tests/conftest.py's ONE_THREAD_FOLDERS hook (see tests/toy/test_model.py): without it the
    # miniature's training tests run several times slower on CI's 2 shared cores, and nothing else fails.
    assert torch.get_num_threads() == 1

"""A1111's 75-token chunks (``prompts.a1111_chunks``) on a word-per-token stand-in tokenizer, worked by hand:
the window, ``BREAK``, padding, weights, and the comma backtrack (``comma_padding_backtrack`` = 20)."""

from __future__ import annotations

from types import SimpleNamespace

from diffusion_notes.prompts import a1111_chunks, empty_chunk

BOS, EOS, PAD, COMMA = 1000, 1001, 0, 999


class WordTokenizer:
    """Each space-separated word ``w<n>`` is token ``n``; ``,`` is its own token (``,</w>``, as CLIP spells it)."""

    model_max_length, bos_token_id, eos_token_id, pad_token_id = 77, BOS, EOS, PAD

    def get_vocab(self):
        return {",</w>": COMMA}

    def __call__(self, text, add_special_tokens=False):
        words = text.replace(",", " , ").split()
        return SimpleNamespace(input_ids=[COMMA if w == "," else int(w[1:]) for w in words])


def words(start, stop):
    return " ".join(f"w{i}" for i in range(start, stop))


def test_a_full_chunk_moves_the_words_after_a_recent_comma_to_the_next():
    prompt = f"{words(1, 71)} , {words(71, 81)}"  # 70 words, a comma, 10 words
    first, second = a1111_chunks(WordTokenizer(), prompt)
    assert first.ids == (BOS, *range(1, 71), COMMA, EOS) + (PAD,) * 4
    assert second.ids == (BOS, *range(71, 81), EOS) + (PAD,) * 65
    plain_first, plain_second = a1111_chunks(WordTokenizer(), prompt, comma_backtrack=0)
    assert plain_first.ids == (BOS, *range(1, 71), COMMA, *range(71, 75), EOS)
    assert plain_second.ids == (BOS, *range(75, 81), EOS) + (PAD,) * 69


def test_a_comma_further_back_than_20_tokens_is_ignored():
    prompt = f"{words(1, 51)} , {words(51, 81)}"  # comma at index 50: 75 - 50 = 25 > 20
    first, second = a1111_chunks(WordTokenizer(), prompt)
    assert first.ids[1:76] == (*range(1, 51), COMMA, *range(51, 75))
    assert second.ids[1:8] == (*range(75, 81), EOS)


def test_break_weights_and_empty_prompts():
    first, second = a1111_chunks(WordTokenizer(), "w1 (w2:1.5) BREAK [w3]")
    assert first.ids[:4] == (BOS, 1, 2, EOS) and first.weights[:4] == (1.0, 1.0, 1.5, 1.0)
    assert second.ids[:3] == (BOS, 3, EOS) and second.weights[1] == 1 / 1.1
    assert len(first.ids) == len(first.weights) == 77
    assert a1111_chunks(WordTokenizer(), "") == [empty_chunk(WordTokenizer())]
    assert empty_chunk(WordTokenizer()).ids == (BOS, EOS) + (PAD,) * 75

"""The adapter exercises (notebooks/exercises/06_adapters.ipynb): each checker accepts the reference solution,
rejects each typical mistake with its hint and reports a stub; each checker's reference agrees with an
independent oracle (peft's LoRA merge, the library's A1111 chunked encoder on the shipped miniature, transformers'
tokenizer + resized embedding table after ``load_textual_inversion``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import diffusion_notes.exercises as exercises
from diffusion_notes.exercises.adapters import ADAPTER_EXERCISES, _embed_ref, _long_ref, _lora_ref

SOLUTIONS_PATH = Path(__file__).resolve().parents[1] / "notebooks" / "exercises" / "solutions" / "adapters.py"
F64 = torch.float64


def _load_solutions():
    spec = importlib.util.spec_from_file_location("adapter_solutions", SOLUTIONS_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


solutions = _load_solutions()


def _lora_without_alpha(W, down, up, alpha, multiplier):
    return W + multiplier * (up.flatten(1) @ down.flatten(1)).reshape(W.shape)


def _lora_transposed(W, down, up, alpha, multiplier):
    r = down.shape[0]
    scale = multiplier * (r if alpha is None else alpha) / r
    return W + scale * (down.flatten(1).T @ up.flatten(1).T).reshape(W.shape)


def _lora_none_as_one(W, down, up, alpha, multiplier):
    return W + multiplier * (1.0 if alpha is None else alpha) / down.shape[0] * (up.flatten(1) @ down.flatten(1)).reshape(W.shape)


def _one_bos(token_ids, encode, bos_id, eos_id, pad_id):
    ids = [bos_id] + list(token_ids) + [eos_id]
    ids += [pad_id] * (-len(ids) % 77)
    return encode(torch.tensor(ids).reshape(-1, 77)).reshape(-1, 6)


def _truncated(token_ids, encode, bos_id, eos_id, pad_id):
    ids = list(token_ids)[:75]
    return encode(torch.tensor([[bos_id] + ids + [eos_id] + [pad_id] * (75 - len(ids))]))[0]


def _always_an_extra_chunk(token_ids, encode, bos_id, eos_id, pad_id):
    return solutions.encode_long_prompt(list(token_ids) + [], encode, bos_id, eos_id, pad_id) if len(token_ids) % 75 else \
        torch.cat([solutions.encode_long_prompt(token_ids, encode, bos_id, eos_id, pad_id),
                   solutions.encode_long_prompt([], encode, bos_id, eos_id, pad_id)])


def _off_by_one(words, vocab, table, new_word, new_vectors):
    first = len(table) - 1
    extended = torch.cat([table[:first], new_vectors])
    ids = torch.tensor([i for w in words for i in (range(first, first + len(new_vectors)) if w == new_word else [vocab[w]])])
    return ids, extended[ids]


def _one_position(words, vocab, table, new_word, new_vectors):
    extended = torch.cat([table, new_vectors])
    ids = torch.tensor([len(table) if w == new_word else vocab[w] for w in words])
    return ids, extended[ids]


# (mistake, a word the printed hint must contain), written independently of the checkers' own lists
MISTAKES = {
    "lora_merge": [(_lora_without_alpha, "alpha / r"), (_lora_transposed, "transpose"), (_lora_none_as_one, "alpha = r")],
    "encode_long_prompt": [(_one_bos, "own <start>"), (_truncated, "truncated"), (_always_an_extra_chunk, "extra empty chunk")],
    "embed_with_new_word": [(_off_by_one, "off by one"), (_one_position, "n positions")],
}


def _checker(name):
    return getattr(exercises, f"check_{name}")


def test_registered_and_exported():
    assert set(ADAPTER_EXERCISES) == set(MISTAKES) <= set(exercises.EXERCISES)
    assert all(f"check_{name}" in exercises.__all__ for name in ADAPTER_EXERCISES)


@pytest.mark.parametrize("name", ADAPTER_EXERCISES)
def test_solution_accepted(name, capsys):
    assert _checker(name)(getattr(solutions, name)) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("name, index", [(n, i) for n in ADAPTER_EXERCISES for i in range(len(MISTAKES[n]))])
def test_typical_mistake_rejected_with_hint(name, index, capsys):
    mistake, hint_word = MISTAKES[name][index]
    assert _checker(name)(mistake) is False
    out = capsys.readouterr().out
    assert "expected" in out and "got" in out
    assert "hint:" in out and hint_word in out, out


def test_wrong_order_of_factors_reported_with_the_order(capsys):
    assert exercises.check_lora_merge(lambda W, down, up, alpha, multiplier: W + down @ up) is False
    out = capsys.readouterr().out
    assert "raised RuntimeError" in out and "in that order" in out, out


@pytest.mark.parametrize("name", ADAPTER_EXERCISES)
def test_stub_reported_not_raised(name, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError("write your solution here")

    assert _checker(name)(stub) is False
    assert "not implemented yet" in capsys.readouterr().out


# --- the references against independent oracles -------------------------------------------


@pytest.mark.parametrize("conv", [False, True])
def test_lora_reference_equals_peft_merge(conv):
    """peft's merge_and_unload of a LoRA with r = 3, lora_alpha = 5 on a Linear and on a 3x3 convolution
    (peft: lora_A a 3x3 conv to r channels, lora_B a 1x1 conv) equals the exercise's reference."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False) if conv else torch.nn.Linear(5, 6, bias=False)
    model = torch.nn.Sequential()
    model.add_module("layer", layer)
    W = layer.weight.detach().clone().double()
    wrapped = peft.inject_adapter_in_model(peft.LoraConfig(r=3, lora_alpha=5, target_modules=["layer"]), model)
    lora = wrapped.layer
    with torch.no_grad():
        for p in (lora.lora_A["default"].weight, lora.lora_B["default"].weight):
            p.copy_(torch.randn(p.shape))
    down, up = lora.lora_A["default"].weight.detach().double(), lora.lora_B["default"].weight.detach().double()
    lora.merge()
    merged = lora.base_layer.weight.detach().double()
    torch.testing.assert_close(_lora_ref(W, down, up, 5.0, 1.0), merged, rtol=1e-5, atol=1e-6)


def test_long_prompt_reference_equals_the_library_a1111_encoder():
    """On the shipped miniature, the reference's chunks through the real CLIP text encoder equal
    ``encode_prompt(prompt_syntax="a1111")`` for a 160-token prompt without commas or brackets."""
    from diffusion_notes.mini_sd import load_mini_sd

    sd = load_mini_sd(torch_dtype=torch.float32)
    tokenizer, encoder = sd.tokenizers[0], sd.text_encoders[0]
    prompt = " ".join(["a handwritten seven the digit 7 drawing of a picture"] * 16)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    assert len(ids) == 160
    with torch.no_grad():
        ours = _long_ref(ids, lambda rows: encoder(rows).last_hidden_state.double(), tokenizer.bos_token_id,
                         tokenizer.eos_token_id, tokenizer.pad_token_id)
        library, _ = sd.encode_prompt(prompt, prompt_syntax="a1111")
    assert library.shape == (1, 3 * 77, 64)
    torch.testing.assert_close(ours.float(), library[0], rtol=1e-5, atol=1e-5)


def test_embedding_reference_equals_tokenizer_and_table_after_load_textual_inversion():
    """The reference's ids and rows equal what transformers' tokenizer and the resized embedding table give
    after ``load_textual_inversion`` of a 3-vector embedding on the miniature."""
    from diffusion_notes.mini_sd import load_mini_sd

    sd = load_mini_sd(torch_dtype=torch.float32)
    tokenizer, encoder = sd.tokenizers[0], sd.text_encoders[0]
    vocab = dict(tokenizer.get_vocab())
    table = encoder.get_input_embeddings().weight.detach().clone()
    vectors = torch.randn(3, table.shape[1], generator=torch.Generator().manual_seed(0))
    sd.load_textual_inversion({"boldface": vectors}, token="boldface")
    prompt = "a drawing of boldface seven"
    input_ids = tokenizer(sd.prompt_encoder.expand_words(prompt), add_special_tokens=False).input_ids
    words = [tokenizer.convert_ids_to_tokens(i) for i in tokenizer(prompt.replace("boldface", "x"), add_special_tokens=False).input_ids]
    words = [w if w != "x</w>" else "boldface" for w in words]
    ids, rows = _embed_ref(words, vocab, table.double(), "boldface", vectors.double())
    assert ids.tolist() == input_ids
    with torch.no_grad():
        torch.testing.assert_close(rows.float(), encoder.get_input_embeddings()(torch.tensor(input_ids)), rtol=0, atol=0)

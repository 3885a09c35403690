"""AUTOMATIC1111's long prompts, emphasis and clip skip (``PromptEncoder(prompt_syntax="a1111", clip_skip=)``).

Oracles: today's encoding (one chunk, weights 1: identical), transformers' CLIP run on hand-built
77-token windows (k chunks), the emphasis formula computed by hand, diffusers' UNet on a 154-token
context, and diffusers' ``clip_skip`` (its 1 = A1111's 2).
"""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.errors import SettingsError
from diffusion_notes.stable_diffusion import StableDiffusion

LONG = " ".join(["abc", "defg", "hij", "klmno", "pq"] * 14)  # well over 75 tokens of the tiny tokenizer


@pytest.fixture(scope="module")
def ours(tiny):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = StableDiffusion.from_pretrained(tiny(family)[0], torch_dtype=torch.float32)
        return cache[family]

    return get


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_one_chunk_of_weight_one_equals_the_plain_encoding_exactly(ours, family):
    sd = ours(family)
    prompts = ["a house on a hill", "sky"]
    plain, plain_pooled = sd.encode_prompt(prompts)
    a1111, a1111_pooled = sd.encode_prompt(prompts, prompt_syntax="a1111")
    assert a1111.shape == plain.shape and torch.equal(a1111, plain)
    assert (plain_pooled is None) == (family != "sdxl")
    if plain_pooled is not None:
        assert torch.equal(a1111_pooled, plain_pooled)


def hand_windows(tokenizer, prompt: str) -> list[torch.Tensor]:
    """The prompt's tokens cut every 75, each as <start> + tokens + <end> + the tokenizer's own padding."""
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    windows = []
    for start in range(0, len(ids), 75):
        piece = ids[start:start + 75]
        windows.append(torch.tensor([[tokenizer.bos_token_id, *piece, tokenizer.eos_token_id]
                                     + [tokenizer.pad_token_id] * (75 - len(piece))]))
    return windows


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_k_chunks_equal_each_window_encoded_by_transformers(ours, tiny, family):
    sd, pipe = ours(family), tiny(family)[1]
    windows = hand_windows(pipe.tokenizer, LONG)
    assert len(windows) >= 2
    with torch.no_grad():
        expected = torch.cat([pipe.text_encoder(w).last_hidden_state for w in windows], dim=1)
    context, _ = sd.encode_prompt([LONG], prompt_syntax="a1111")
    assert context.shape == (1, 77 * len(windows), 64)
    torch.testing.assert_close(context, expected, rtol=1e-5, atol=1e-6)
    if family == "sd2":  # SD 2.x pads with "!" (id 0), not <end>
        assert pipe.tokenizer.pad_token_id != pipe.tokenizer.eos_token_id


def test_emphasis_equals_the_formula_by_hand(tiny):
    """The rescaling divides by the chunk's mean, which for a LayerNorm without bias (the random tiny
    model's) is about 0: both encoders get a final LayerNorm bias of 0.5, as trained CLIPs have one."""
    import copy

    folder, pipe = tiny("sd1")
    sd = StableDiffusion.from_pretrained(folder, torch_dtype=torch.float32)
    encoder = copy.deepcopy(pipe.text_encoder)
    for model in (encoder, sd.text_encoders[0]):
        getattr(model, "text_model", model).final_layer_norm.bias.data.fill_(0.5)
    tok = pipe.tokenizer
    pieces = [("a ", 1.0), ("cat", 1.5), (" on ", 1.0), ("mat", 1 / 1.1)]
    ids, weights = [tok.bos_token_id], [1.0]
    for text, w in pieces:
        piece = tok(text, add_special_tokens=False).input_ids
        ids, weights = ids + piece, weights + [w] * len(piece)
    room = 77 - len(ids) - 1
    ids, weights = ids + [tok.eos_token_id] + [tok.pad_token_id] * room, weights + [1.0] * (room + 1)
    with torch.no_grad():
        z = encoder(torch.tensor([ids])).last_hidden_state.double()
    w = torch.tensor(weights, dtype=torch.float64)[None, :, None]
    expected = z * w * (z.mean() / (z * w).mean())
    context, _ = sd.encode_prompt(["a (cat:1.5) on [mat]"], prompt_syntax="a1111")
    torch.testing.assert_close(context.double(), expected, rtol=1e-5, atol=1e-6)
    plain, _ = sd.encode_prompt(["a cat on mat"], prompt_syntax="a1111")
    assert (context - plain).abs().max() > 1e-3  # the weights did something


def test_negative_prompt_padded_to_the_same_chunks_and_the_unet_takes_77k_tokens(ours, tiny):
    sd, pipe = ours("sd1"), tiny("sd1")[1]
    k = sd.prompt_encoder.count_chunks([LONG, ""])
    assert k == len(hand_windows(pipe.tokenizer, LONG))
    context, _ = sd.encode_prompt([LONG], prompt_syntax="a1111")
    negative, _ = sd.encode_prompt([""], prompt_syntax="a1111", min_chunks=k)
    assert negative.shape == context.shape
    empty, _ = sd.encode_prompt([""])
    torch.testing.assert_close(negative[:, 77:], empty.repeat(1, k - 1, 1))  # padded with empty chunks
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([20, 700])
    both = torch.cat([context, negative])
    with torch.no_grad():
        ours_eps = sd.unet(x, t, both)
        theirs = pipe.unet(x, t, encoder_hidden_states=both).sample
    torch.testing.assert_close(ours_eps, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_clip_skip_equals_diffusers_clip_skip_minus_one(ours, tiny, family):
    sd, pipe = ours(family), tiny(family)[1]
    prompts = ["a house on a hill"]
    # diffusers 0.42.1 reads text_encoder.text_model.final_layer_norm, a level transformers >= 5.6 removed:
    # give the encoder that name for the call (a plain attribute, not a registered submodule)
    encoder = pipe.text_encoder
    if not hasattr(encoder, "text_model"):
        object.__setattr__(encoder, "text_model", encoder)
    try:
        with torch.no_grad():
            theirs = their_clip_skip(pipe, prompts, family)
    finally:
        encoder.__dict__.pop("text_model", None)
    context, _ = sd.encode_prompt(prompts, clip_skip=2)
    torch.testing.assert_close(context, theirs, rtol=1e-5, atol=1e-6)
    assert (context - sd.encode_prompt(prompts)[0]).abs().max() > 1e-3


def their_clip_skip(pipe, prompts, family):
    """diffusers' prompt embeddings with its ``clip_skip=1`` (one layer before the usual one)."""
    if family == "sdxl":
        return pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                  do_classifier_free_guidance=False, clip_skip=1)[0]
    return pipe.encode_prompt(prompts, "cpu", 1, False, clip_skip=1)[0]


def test_bad_options_are_settings_errors(ours):
    sd = ours("sd1")
    for kwargs, option in (({"prompt_syntax": "comfy"}, "prompt_syntax"), ({"clip_skip": 0}, "clip_skip"),
                           ({"min_chunks": 0}, "min_chunks")):
        with pytest.raises(SettingsError) as error:
            sd.encode_prompt("x", **kwargs)
        assert error.value.option == option

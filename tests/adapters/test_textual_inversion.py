"""Textual inversion loaded by this package vs diffusers' ``load_textual_inversion`` + ``encode_prompt``
on the same tiny SD 1.x pipeline: prompt embeddings equal to 1e-5; bad files refused in one line."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from diffusion_notes.errors import CheckpointError
from diffusion_notes.stable_diffusion import StableDiffusion


def fresh_pair(tiny):
    from diffusers import StableDiffusionPipeline

    folder = tiny("sd1")[0]
    return (StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32),
            StableDiffusion.from_pretrained(folder, torch_dtype=torch.float32))


def their_embeddings(pipe, prompts):
    with torch.no_grad():
        return pipe.encode_prompt(prompts, "cpu", 1, False)[0]


@pytest.mark.parametrize("kind", ["a1111-pt", "a1111-safetensors", "diffusers"])
def test_embedding_equals_diffusers_load_textual_inversion(tiny, tmp_path, kind):
    pipe, sd = fresh_pair(tiny)
    vectors = torch.randn(2 if kind != "diffusers" else 1, 64, generator=torch.Generator().manual_seed(4))
    if kind == "a1111-pt":
        path = tmp_path / "mystyle.pt"
        torch.save({"string_to_param": {"*": vectors}, "name": "mystyle", "step": 100}, path)
    elif kind == "a1111-safetensors":
        path = tmp_path / "mystyle.safetensors"
        save_file({"emb_params": vectors}, path)
    else:
        path = tmp_path / "learned_embeds.safetensors"
        save_file({"mystyle": vectors[0]}, path)
    pipe.load_textual_inversion(str(path), token="mystyle")
    tokens = sd.load_textual_inversion(path)  # the token: the file's stem, or the one a diffusers file names
    assert tokens == ["mystyle"] + (["mystyle_1"] if vectors.shape[0] == 2 else [])
    prompts = ["a house in mystyle", "mystyle sky"]
    ours, _ = sd.encode_prompt(prompts)
    torch.testing.assert_close(ours, their_embeddings(pipe, prompts), rtol=1e-5, atol=1e-6)
    plain, _ = sd.encode_prompt(["a house in sky"])
    assert (ours[:1] - plain).abs().max() > 1e-3


def test_bad_embeddings_are_refused_with_nothing_changed(tiny, tmp_path):
    _, sd = fresh_pair(tiny)
    vocabulary = len(sd.tokenizer)
    cases = [({"emb_params": torch.randn(1, 48)}, "width 48"),
             ({"emb_params": torch.full((1, 64), float("nan"))}, "NaN"),
             ({"something": torch.randn(2, 2), "else": torch.randn(2)}, "not a textual-inversion embedding")]
    for index, (state, message) in enumerate(cases):
        path = tmp_path / f"bad{index}.safetensors"
        save_file(state, path)
        with pytest.raises(CheckpointError, match=message) as error:
            sd.load_textual_inversion(path)
        assert "\n" not in str(error.value)
    vector = torch.randn(1, 64)
    sd.load_textual_inversion({"emb_params": vector}, token="newword")
    with pytest.raises(CheckpointError, match="already in the tokenizer"):
        sd.load_textual_inversion({"emb_params": torch.randn(1, 64)}, token="newword")
    assert len(sd.tokenizer) == vocabulary + 1
    row = sd.tokenizer.convert_tokens_to_ids("newword")
    assert torch.equal(sd.text_encoders[0].get_input_embeddings().weight[row], vector[0])


def test_sdxl_embedding_with_both_tables_equals_diffusers(tiny, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    folder = tiny("sdxl")[0]
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    sd = StableDiffusion.from_pretrained(folder, torch_dtype=torch.float32)
    g = torch.Generator().manual_seed(6)
    tables = {"clip_l": torch.randn(2, 64, generator=g), "clip_g": torch.randn(2, 128, generator=g)}
    path = tmp_path / "sdxlstyle.safetensors"
    save_file(tables, path)
    pipe.load_textual_inversion(tables["clip_l"], token="sdxlstyle", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(tables["clip_g"], token="sdxlstyle", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    assert sd.load_textual_inversion(path) == ["sdxlstyle", "sdxlstyle_1"]
    prompts = ["a house in sdxlstyle"]
    ours, ours_pooled = sd.encode_prompt(prompts)
    with torch.no_grad():
        theirs, _, theirs_pooled, _ = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                                         do_classifier_free_guidance=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_pooled, theirs_pooled, rtol=1e-5, atol=1e-6)

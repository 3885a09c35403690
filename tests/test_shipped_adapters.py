"""The adapters shipped for notebook 15 (``diffusion_notes/mini_sd/adapters``, made by ``scripts/train_adapters.py``)
are files that diffusers reads as we do: the kohya LoRA through ``load_lora_weights`` + ``fuse_lora``, the
AUTOMATIC1111 embedding through ``load_textual_inversion``; and the script's embedding training moves only the
new word's row of the token-embedding table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from diffusion_notes.mini_sd import load_mini_sd, weights_path

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = weights_path().parent.parent / "adapters"
LORA, EMBEDDING = ADAPTERS / "mirror_writing.safetensors", ADAPTERS / "boldface.safetensors"


def _script():
    spec = importlib.util.spec_from_file_location("train_adapters", ROOT / "scripts" / "train_adapters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The miniature as our StableDiffusion and as a diffusers pipeline read from its diffusers folder."""
    pytest.importorskip("peft")  # diffusers' LoRA loading needs it (a dev extra)
    from diffusers import StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("mini") / "diffusers"
    load_mini_sd(torch_dtype=torch.float32).save_pretrained(folder)
    return _ours_from(folder), StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)


def _ours_from(folder):
    from diffusion_notes.stable_diffusion import StableDiffusion

    return StableDiffusion.from_pretrained(folder, torch_dtype=torch.float32)


def _unet_outputs(ours, pipe):
    g = torch.Generator().manual_seed(0)
    x, context, t = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 77, 64, generator=g), torch.tensor([20, 700])
    with torch.no_grad():
        return ours.unet(x, t, context), pipe.unet(x, t, encoder_hidden_states=context).sample


def test_shipped_lora_equals_diffusers_fuse_lora(both):
    ours, pipe = both
    before, _ = _unet_outputs(ours, pipe)
    ours.load_lora(LORA, scale=0.8)
    pipe.load_lora_weights(str(LORA))
    pipe.fuse_lora(lora_scale=0.8)
    try:
        mine, theirs = _unet_outputs(ours, pipe)
        assert (mine - before).abs().max() > 1e-2  # the LoRA changes the UNet
        assert (mine - theirs).abs().max() / theirs.abs().max() < 1e-5
    finally:
        ours.unload_loras()
        pipe.unfuse_lora()
        pipe.unload_lora_weights()


def test_shipped_embedding_equals_diffusers_load_textual_inversion(both):
    ours, pipe = both
    assert ours.load_textual_inversion(EMBEDDING) == ["boldface"]  # the token is the file's stem (A1111)
    pipe.load_textual_inversion(str(EMBEDDING), token="boldface")
    prompts = ["a handwritten boldface", "boldface"]
    with torch.no_grad():
        mine = ours.encode_prompt(prompts)[0]
        theirs = pipe.encode_prompt(prompts, "cpu", 1, False)[0]
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_embedding_training_moves_only_the_new_row():
    script = _script()
    torch.manual_seed(0)
    sd, vector, losses, _, count = script.train_embedding(steps=3, lr=5e-2, batch=4, seed=0, log_every=10)
    reference = script.load_for_training()
    old = reference.text_encoders[0].get_input_embeddings().weight
    new = sd.text_encoders[0].get_input_embeddings().weight
    row = sd.tokenizers[0].convert_tokens_to_ids(script.WORD)
    assert row == old.shape[0] and new.shape[0] == old.shape[0] + 1
    assert torch.equal(new[:row], old)  # every existing row bit for bit
    start = old[sd.tokenizers[0].convert_tokens_to_ids(script.INIT_WORD + "</w>")]
    assert not torch.equal(vector, start) and len(losses) == 3 and count == 31
    frozen, trained = reference.state_dict(), sd.state_dict()
    assert trained.keys() == frozen.keys()
    changed = [k for k in frozen if not (trained[k].shape == frozen[k].shape and torch.equal(trained[k], frozen[k]))]
    assert changed == ["prompt_encoder.text_encoders.0.text_model.embeddings.token_embedding.weight"] or \
        changed == ["prompt_encoder.text_encoders.0.embeddings.token_embedding.weight"], changed  # only the table

"""Single files carry what their tensors cannot show, in the safetensors ``__metadata__`` header.

The model is built from fresh parts with settings no release has (2 UNet heads, 4 CLIP heads on a
64-wide encoder, v-prediction, scale factor 0.3, 16x16 native size). The oracle is the in-memory
model that wrote the file: the reloaded one must give bit-identical outputs, which wrong heads
would not (they mix different channels). The header itself is read with ``json`` from the raw bytes,
as the safetensors format defines it (8-byte little-endian length, then JSON).
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
import yaml

from diffusion_notes.checkpoints.io import load_state_dict, save_state_dict
from diffusion_notes.checkpoints.metadata import read_header
from diffusion_notes.errors import CheckpointError
from diffusion_notes.models.config import AutoencoderConfig, UNetConfig
from diffusion_notes.models.vae import AutoencoderKL
from diffusion_notes.pipeline import default_size
from diffusion_notes.stable_diffusion import StableDiffusion
from diffusion_notes.training import assemble_stable_diffusion, build_text_encoder, build_word_tokenizer

UNET = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(0, 1), context_dim=64,
                  num_heads=2)


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom")
    torch.manual_seed(0)
    tokenizer = build_word_tokenizer(["seven", "digit"], root / "tokenizer")
    sd = assemble_stable_diffusion(UNET, AutoencoderKL(AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)),
                                   build_text_encoder(tokenizer, 64, 2, 4), tokenizer, 0.3, native_size=(16, 16),
                                   prediction_type="v")
    with torch.no_grad():
        for p in sd.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd.eval().requires_grad_(False)
    path = root / "custom.safetensors"
    sd.save_single_file(path, metadata={"trained_by": "a test"})
    return sd, path, root / "tokenizer"


def _outputs(sd):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    context = sd.encode_prompt(["seven", "digit seven"])[0]
    with torch.no_grad():
        return context, sd.unet(x, torch.tensor([10, 900]), context)


def test_header_holds_the_invisible_settings(custom):
    _, path, _ = custom
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))["__metadata__"]
    assert header["diffusion_notes.scale_factor"] == "0.3" and header["diffusion_notes.prediction_type"] == "v"
    assert header["diffusion_notes.unet.num_heads"] == "2" and header["diffusion_notes.text.num_attention_heads"] == "4"
    assert header["modelspec.resolution"] == "16x16" and header["trained_by"] == "a test"


def test_reload_restores_everything_the_weights_cannot_show(custom):
    sd, path, tokenizer = custom
    # prepack=False: the same plain convolutions as ``sd``, so the outputs must be bit-equal
    reloaded = StableDiffusion.from_single_file(path, tokenizer=tokenizer, torch_dtype=torch.float32, prepack=False)
    assert reloaded.config == sd.config
    assert reloaded.text_encoders[0].config.num_attention_heads == 4
    assert default_size(reloaded) == (16, 16)
    for ours, theirs in zip(_outputs(sd), _outputs(reloaded)):
        assert torch.equal(ours, theirs)


def test_a_yaml_still_overrides_the_header(custom, tmp_path):
    _, path, tokenizer = custom
    params = {"parameterization": "eps", "scale_factor": 0.9,
              "unet_config": {"params": {"model_channels": 32, "num_heads": 1, "context_dim": 64}}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"model": {"params": params}}))
    loaded = StableDiffusion.from_single_file(path, config=tmp_path / "a.yaml", tokenizer=tokenizer)
    assert (loaded.prediction_type, loaded.scale_factor, loaded.config.unet.num_heads) == ("eps", 0.9, 1)
    # A YAML unet_config without num_heads / num_head_channels keeps the header's heads (it used to set -1, -1).
    params["unet_config"]["params"].pop("num_heads")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"model": {"params": params}}))
    loaded = StableDiffusion.from_single_file(path, config=tmp_path / "b.yaml", tokenizer=tokenizer,
                                              torch_dtype=torch.float32, prepack=False)  # bit-equal below
    assert loaded.config.unet.num_heads == 2
    assert torch.equal(_outputs(loaded)[1], _outputs(custom[0])[1])


def test_without_the_header_an_unreleased_clip_width_is_refused(custom, tmp_path):
    _, path, tokenizer = custom
    bare = tmp_path / "bare.safetensors"
    save_state_dict(load_state_dict(path), bare)  # the same tensors, no metadata
    assert read_header(bare) == {}
    with pytest.raises(CheckpointError, match="64 wide.*attention heads"):
        StableDiffusion.from_single_file(bare, tokenizer=tokenizer)


def test_malformed_or_contradictory_metadata_is_refused(custom, tmp_path):
    _, path, tokenizer = custom
    for key, value, message in [("diffusion_notes.scale_factor", "big", "scale_factor='big' is malformed"),
                                ("diffusion_notes.text.num_attention_heads", "3", "3 attention heads do not divide"),
                                ("diffusion_notes.unet.num_heads", "3", "do not fit these weights")]:
        broken = tmp_path / "broken.safetensors"
        save_state_dict(load_state_dict(path), broken, metadata={**read_header(path), key: value}, overwrite=True)
        with pytest.raises(CheckpointError, match=message):
            StableDiffusion.from_single_file(broken, tokenizer=tokenizer)

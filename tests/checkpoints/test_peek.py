"""checkpoints.peek: the VAE geometry read before loading equals the loaded model's, from a diffusers
folder and from a safetensors single file; None where it cannot be told without loading.

Oracle: diffusers' pipeline that wrote the tiny folder (``vae_scale_factor`` and the VAE's first
``block_out_channels``)."""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.checkpoints.io import load_state_dict
from diffusion_notes.checkpoints.peek import VaeGeometry, peek_vae
from diffusion_notes.stable_diffusion import StableDiffusion


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_folder_and_single_file_give_diffusers_geometry(tiny, tmp_path, family):
    folder, pipe = tiny(family)
    expected = VaeGeometry(pipe.vae_scale_factor, pipe.vae.config.block_out_channels[0])
    path = tmp_path / "model.safetensors"
    StableDiffusion.from_pretrained(folder, torch_dtype=torch.float32).save_single_file(path)
    assert peek_vae(folder) == expected
    assert peek_vae(str(path)) == expected


def test_what_cannot_be_told_before_loading_is_none(tiny, tmp_path):
    folder, _ = tiny("sd1")
    single = tmp_path / "model.safetensors"
    StableDiffusion.from_pretrained(folder, torch_dtype=torch.float32).save_single_file(single)
    pickle = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_state_dict(single)}, pickle)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(single.read_bytes()[:-100])
    for source in (pickle, truncated, tmp_path / "missing.safetensors", "some-org/some-model", tmp_path):
        assert peek_vae(source) is None, source

"""Our ``save_pretrained`` writes folders that diffusers loads to the same outputs."""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.checkpoints.io import CheckpointError
from diffusion_notes.stable_diffusion import StableDiffusion

from .oracles import diffusers_prompt, diffusers_unet, max_diff, our_unet, unet_inputs


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_diffusers_loads_our_folder(tiny, tmp_path, family):
    from diffusers import DiffusionPipeline

    model = StableDiffusion.from_pretrained(tiny(family)[0])
    model.save_pretrained(tmp_path / "out")
    theirs = DiffusionPipeline.from_pretrained(tmp_path / "out", local_files_only=True)
    pooled = torch.randn(2, 32) if family == "sdxl" else None
    x, t, context = unet_inputs(model.config.unet)
    assert max_diff(diffusers_unet(theirs, x, t, context, pooled), our_unet(model, x, t, context, pooled)) < 1e-5
    assert max_diff(diffusers_prompt(theirs)[0], model.encode_prompt(["the cat", "a cat that is a cat"])[0]) < 1e-5
    assert theirs.scheduler.config.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    again = StableDiffusion.from_pretrained(tmp_path / "out")
    assert again.config == model.config


def test_save_refuses_to_overwrite(tiny, tmp_path):
    model = StableDiffusion.from_pretrained(tiny("sd1")[0])
    (tmp_path / "taken.safetensors").write_bytes(b"user data")
    with pytest.raises(CheckpointError, match="overwrite=True"):
        model.save_single_file(tmp_path / "taken.safetensors")
    with pytest.raises(CheckpointError, match="overwrite=True"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "taken.safetensors").read_bytes() == b"user data"

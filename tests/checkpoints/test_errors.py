"""Mistakes a user can make get one line that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.checkpoints.io import CheckpointError, load_state_dict, save_state_dict
from diffusion_notes.stable_diffusion import StableDiffusion


@pytest.fixture(scope="module")
def sd1_file(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("errors") / "sd1.safetensors"
    StableDiffusion.from_pretrained(tiny("sd1")[0]).save_single_file(path)
    return path


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def _rewrite(src, dst, edit):
    """Edit a checkpoint and save it as a CompVis-style ``.ckpt`` (a torch.save zip)."""
    state_dict = {k: v.clone() for k, v in load_state_dict(src).items()}
    edit(state_dict)
    torch.save({"state_dict": state_dict}, dst)
    return dst


def test_missing_unet_keys_are_counted_with_their_prefix(tiny, sd1_file, tmp_path):
    def drop(sd):
        for key in [k for k in sd if k.startswith("model.diffusion_model.output_blocks.4.")]:
            del sd[key]

    path = _rewrite(sd1_file, tmp_path / "broken.ckpt", drop)
    with pytest.raises(CheckpointError) as excinfo:
        StableDiffusion.from_single_file(path, tokenizer=tiny("sd1")[0])
    message = _one_line(excinfo)
    assert "missing" in message and "'model.diffusion_model.'" in message
    # count from the file itself: every tensor of output_blocks.4 went missing
    expected = sum(1 for k in load_state_dict(sd1_file) if k.startswith("model.diffusion_model.output_blocks.4."))
    assert f"missing {expected} of" in message


def test_a_non_sd_state_dict_is_unsupported(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_state_dict({"fc.weight": torch.zeros(2, 2), "conv1.weight": torch.zeros(1, 1, 1, 1)}, path)
    with pytest.raises(CheckpointError, match="model.diffusion_model") as excinfo:
        StableDiffusion.from_single_file(path)
    _one_line(excinfo)


def test_an_unknown_context_width_is_unsupported(sd1_file, tmp_path):
    def strip_text(sd):
        for key in [k for k in sd if k.startswith("cond_stage_model.")]:
            del sd[key]

    path = _rewrite(sd1_file, tmp_path / "no-text.ckpt", strip_text)  # context width 64: no known family
    with pytest.raises(CheckpointError, match="unsupported architecture.*64") as excinfo:
        StableDiffusion.from_single_file(path)
    _one_line(excinfo)


def test_no_tokenizer_lists_the_three_ways(sd1_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CheckpointError) as excinfo:
        StableDiffusion.from_single_file(sd1_file)
    message = _one_line(excinfo)
    assert "tokenizer=" in message and "openai/clip-vit-large-patch14" in message and "online" in message


def test_hub_id_offline_names_the_local_alternatives(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as excinfo:
        StableDiffusion.from_pretrained("someone/not-a-cached-model")
    message = _one_line(excinfo)
    assert "local diffusers folder" in message and "from_single_file" in message


def test_a_yaml_for_another_model_is_refused(tiny, sd1_file, tmp_path):
    from models.builders import write_original_yaml

    yaml = write_original_yaml(tmp_path / "xl.yaml", "sdxl")
    with pytest.raises(CheckpointError, match="context_dim") as excinfo:
        StableDiffusion.from_single_file(sd1_file, config=yaml, tokenizer=tiny("sd1")[0])
    _one_line(excinfo)


def test_unknown_prediction_type(tiny):
    with pytest.raises(ValueError, match="'eps' or 'v'"):
        StableDiffusion.from_pretrained(tiny("sd1")[0], prediction_type="x_start")

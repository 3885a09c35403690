"""``python -m diffusion_notes train-mini-sd``: a two-step run writes a loadable model, deterministically."""

from __future__ import annotations

import torch

from diffusion_notes.checkpoints.io import load_state_dict
from diffusion_notes.checkpoints.metadata import read_header
from diffusion_notes.mini_sd import train
from diffusion_notes.stable_diffusion import StableDiffusion


def test_two_step_run_writes_a_model_that_loads_and_refuses_to_overwrite(tmp_path, capsys):
    argv = ["--out-dir", str(tmp_path / "a"), "--vae-steps", "1", "--steps", "1", "--no-progress"]
    assert train.main(argv) == 0
    path = tmp_path / "a" / train.WEIGHTS_NAME
    header = read_header(path)
    assert header["mini_sd.command"].endswith("train-mini-sd " + " ".join(argv))
    assert header["modelspec.resolution"] == "32x32" and header["diffusion_notes.text.num_attention_heads"] == "4"
    sd = StableDiffusion.from_single_file(path, tokenizer=tmp_path / "a" / train.TOKENIZER_NAME)
    assert sd.txt2img("seven", steps=2, seed=0, output="array").arrays.shape == (1, 32, 32, 3)
    assert all(t.dtype == torch.float16 for t in load_state_dict(path).values())

    assert train.main(argv) == 1  # refuses to replace, before training
    assert "already exist" in capsys.readouterr().err

    # Same seed, same thread count: the same weights, bit for bit.
    assert train.main([*argv[:1], str(tmp_path / "b"), *argv[2:]]) == 0
    first, second = load_state_dict(path), load_state_dict(tmp_path / "b" / train.WEIGHTS_NAME)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

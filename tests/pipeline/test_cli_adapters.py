"""``--lora``, ``--lora-dir``, ``--embedding``, ``--vae`` on the command line, end to end on the tiny SD 1.x model.

A run with the flags must write the picture the Python API makes with the same adapters (``load_lora``,
``load_textual_inversion``, ``with_vae``: each proven against diffusers in tests/adapters and
tests/checkpoints), with AUTOMATIC1111's ``Lora hashes`` / ``TI hashes`` / ``VAE`` fields; every bad
adapter input is one line naming its flag, exit status 2, and, where the file can be checked without
the model, before the model is loaded.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from adapters.lora_files import kohya_lora
from diffusion_notes import cli
from diffusion_notes.images import parse_parameters
from diffusion_notes.stable_diffusion import StableDiffusion

from .helpers import SIZE

FAST = ["--ddim_steps", "4", "--device", "cpu", "--precision", "fp32", "--H", str(SIZE), "--W", str(SIZE)]


def _args(folder, outdir, *extra, prompt="the cat"):
    return ["txt2img", "--prompt", prompt, "--model", str(folder), "--outdir", str(outdir), *FAST, *extra]


def _png(outdir):
    path = outdir / "samples" / "00000.png"
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")), parse_parameters(image.text["parameters"])


def addnet_hash(path) -> str:
    data = path.read_bytes()  # AUTOMATIC1111 / kohya: sha256 of the bytes after the safetensors header
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()


@pytest.fixture
def files(tiny, tmp_path):
    """A LoRA, an embedding and a VAE for the tiny SD 1.x model, in tmp_path."""
    folder, pipe = tiny("sd1")
    sd = StableDiffusion.from_pretrained(folder, torch_dtype=torch.float32)
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    save_file(kohya_lora(pipe, seed=2), lora_dir / "style.safetensors")
    torch.save({"string_to_param": {"*": torch.randn(2, 64, generator=torch.Generator().manual_seed(1))},
                "name": "mystyle", "step": 10}, tmp_path / "mystyle.pt")
    g = torch.Generator().manual_seed(0)
    save_file({k: (v + 0.05 * torch.randn(v.shape, generator=g)).contiguous() for k, v in sd.vae.state_dict().items()},
              tmp_path / "vae.safetensors")
    return folder, lora_dir / "style.safetensors", tmp_path / "mystyle.pt", tmp_path / "vae.safetensors"


def test_adapter_flags_give_the_pictures_of_the_python_api(files, tmp_path):
    folder, lora, embedding, vae = files
    out = tmp_path / "out"
    code = cli.main(_args(folder, out, "--lora", f"{lora}:0.7", "--embedding", str(embedding), "--vae", str(vae),
                          prompt="a mystyle cat"))
    assert code == 0
    picture, params = _png(out)

    sd = StableDiffusion.from_pretrained(folder, torch_dtype=torch.float32).with_vae(vae)
    sd.load_lora(lora, scale=0.7)
    sd.load_textual_inversion(embedding)
    expected = sd.txt2img("a mystyle cat", steps=4, height=SIZE, width=SIZE, seed=42, sampler="plms")
    assert np.array_equal(picture, np.asarray(expected.images[0]))
    assert params["Lora hashes"] == f"style: {addnet_hash(lora)[:12]}"
    assert params["TI hashes"] == f"mystyle: {hashlib.sha256(embedding.read_bytes()).hexdigest()[:12]}"
    assert params["VAE"] == "vae.safetensors"

    plain = tmp_path / "plain"
    assert cli.main(_args(folder, plain, prompt="a mystyle cat")) == 0
    assert np.abs(_png(plain)[0].astype(int) - picture).max() > 0  # the adapters did change the picture


def test_prompt_tag_with_lora_dir(files, tmp_path):
    folder, lora, _, _ = files
    out = tmp_path / "out"
    assert cli.main(_args(folder, out, "--prompt-syntax", "a1111", "--lora-dir", str(lora.parent),
                          prompt="the cat <lora:style:0.7>")) == 0
    tagged, params = _png(out)
    assert params["prompt"] == "the cat <lora:style:0.7>"
    assert params["Lora hashes"] == f"style: {addnet_hash(lora)[:12]}"
    flag = tmp_path / "flag"
    assert cli.main(_args(folder, flag, "--prompt-syntax", "a1111", "--lora", f"{lora}:0.7", prompt="the cat ")) == 0
    assert np.array_equal(tagged, _png(flag)[0])  # the tag and --lora merge the same file


def _no_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the bad flag was reported")


@pytest.mark.parametrize("extra, message", [
    (lambda d: ["--lora", str(d / "missing.safetensors")], "--lora {d}/missing.safetensors: no such file"),
    (lambda d: ["--lora", f"{d}/loras/style.safetensors:nan"], "--lora {d}/loras/style.safetensors:nan: the scale "
                                                               "'nan' is not a finite number"),
    (lambda d: ["--lora", f"{d}/loras/style.safetensors:x"], "--lora {d}/loras/style.safetensors:x: no such file"),
    (lambda d: ["--lora", str(d / "loras")], "--lora {d}/loras: not a file (a folder)"),
    (lambda d: ["--lora", str(d / "vae.safetensors")], "--lora {d}/vae.safetensors: not a LoRA file"),
    (lambda d: ["--embedding", str(d / "loras" / "style.safetensors")], "--embedding {d}/loras/style.safetensors: "
                                                                        "{d}/loras/style.safetensors: not a textual"),
    (lambda d: ["--embedding", str(d / "nothing.pt")], "--embedding {d}/nothing.pt: no such file"),
    (lambda d: ["--vae", str(d / "loras" / "style.safetensors")], "--vae {d}/loras/style.safetensors: "
                                                                  "{d}/loras/style.safetensors: a LoRA file, not a VAE"),
    (lambda d: ["--vae", str(d / "missing")], "--vae {d}/missing: {d}/missing: no such VAE"),
    (lambda d: ["--lora-dir", str(d / "missing")], "--lora-dir {d}/missing: no such folder"),
    (lambda d: ["--prompt-syntax", "a1111", "--prompt", "a <lora:zzz:1>", "--lora-dir", str(d / "loras")],
     "--lora-dir: <lora:zzz>: no zzz.safetensors, .pt or .ckpt in the LoRA folder {d}/loras (it has: style)"),
    (lambda d: ["--prompt-syntax", "a1111", "--prompt", "a <lora:style:1>"], "--lora-dir: <lora:style:1>: no LoRA "
                                                                              "folder"),
])
def test_bad_adapter_flags_are_one_line_naming_the_flag_before_loading(files, tmp_path, capsys, monkeypatch, extra,
                                                                        message):
    folder = files[0]
    monkeypatch.setattr(cli, "_load", _no_load)
    assert cli.main(_args(folder, tmp_path / "out", *extra(tmp_path))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(d=tmp_path)), err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_adapters_the_loaded_model_refuses_are_named_by_their_flag(files, tmp_path, capsys):
    folder = files[0]
    sdxl_vae = tmp_path / "sdxl-vae"
    import json
    import shutil
    shutil.copytree(folder / "vae", sdxl_vae)
    config = json.loads((sdxl_vae / "config.json").read_text())
    (sdxl_vae / "config.json").write_text(json.dumps(config | {"scaling_factor": 0.13025}))
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 64),
               "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(64, 2)},
              tmp_path / "sdxl_lora.safetensors")
    for extra, message in ((["--vae", str(sdxl_vae)], f"error: --vae {sdxl_vae}: VAE {sdxl_vae}: made for latents "
                                                        "scaled by 0.13025 (SDXL's)"),
                           (["--lora", str(tmp_path / "sdxl_lora.safetensors")],
                            f"error: --lora {tmp_path}/sdxl_lora.safetensors: LoRA layer "
                            "'lora_te1_text_model_encoder_layers_0_mlp_fc1' matches no layer of this sd1 model")):
        assert cli.main(_args(folder, tmp_path / "out", *extra)) == 2
        err = capsys.readouterr().err
        assert err.startswith(message), err
        assert err.count("\n") == 1 and not (tmp_path / "out" / "samples").exists()

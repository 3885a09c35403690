"""``python -m diffusion_notes txt2img | img2img | inpaint`` end to end on tiny checkpoints."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_notes import cli
from diffusion_notes.images import parse_parameters
from diffusion_notes.stable_diffusion import StableDiffusion

from .helpers import SIZE, make_image, make_mask

FAST = ["--ddim_steps", "4", "--device", "cpu"]


def _txt2img_args(folder, outdir, *extra):
    return ["txt2img", "--prompt", "the cat", "--model", str(folder), "--H", str(SIZE), "--W", str(SIZE),
            "--outdir", str(outdir), *FAST, *extra]


def _parameters(path) -> dict:
    with Image.open(path) as image:
        return parse_parameters(image.text["parameters"])


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_txt2img_writes_numbered_files_with_parameters_and_never_overwrites(tiny, tmp_path, capsys):
    folder, out = tiny("sd1")[0], tmp_path / "out"
    assert cli.main(_txt2img_args(folder, out, "--negative-prompt", "hat")) == 0
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["00000.png"]
    assert (out / "grid-0000.png").is_file()
    params = _parameters(out / "samples" / "00000.png")
    assert params == {"prompt": "the cat", "negative_prompt": "hat", "Steps": "4", "Sampler": "PLMS",
                      "CFG scale": "7.5", "Seed": "42", "Size": f"{SIZE}x{SIZE}", "Model": "sd1"}
    first = _digest(out / "samples" / "00000.png")
    assert "running on the CPU" in capsys.readouterr().err

    assert cli.main(_txt2img_args(folder, out, "--n_samples", "2", "--n_iter", "2", "--ddim", "--seed", "5")) == 0
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"{i:05}.png" for i in range(5)]
    assert sorted(p.name for p in out.glob("grid-*.png")) == ["grid-0000.png", "grid-0001.png"]
    assert _digest(out / "samples" / "00000.png") == first
    second_batch = _parameters(out / "samples" / "00004.png")
    assert (second_batch["Sampler"], second_batch["Seed"], second_batch["Batch pos"]) == ("DDIM", "6", "1")
    with Image.open(out / "grid-0001.png") as grid:  # 2 rows (iterations) x 2 columns (samples), 2 px padding
        assert grid.size == (2 * SIZE + 6, 2 * SIZE + 6)


def test_single_file_with_tokenizer_gives_the_same_image_as_the_folder(tiny, tmp_path):
    folder = tiny("sd1")[0]
    checkpoint = tmp_path / "tiny-sd1.safetensors"
    StableDiffusion.from_pretrained(folder).save_single_file(checkpoint)
    args = ["txt2img", "--prompt", "the cat", "--ckpt", str(checkpoint), "--tokenizer", str(folder), "--H", str(SIZE),
            "--W", str(SIZE), "--outdir", str(tmp_path / "single"), *FAST]
    assert cli.main(args) == 0
    assert cli.main(_txt2img_args(folder, tmp_path / "folder")) == 0
    from_file, from_folder = (np.asarray(Image.open(tmp_path / name / "samples" / "00000.png"))
                              for name in ("single", "folder"))
    assert np.array_equal(from_file, from_folder)
    assert _parameters(tmp_path / "single" / "samples" / "00000.png")["Model"] == "tiny-sd1"


def test_from_file_renders_each_prompt(tiny, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat\n\na hat\n")
    out = tmp_path / "out"
    args = ["txt2img", "--from-file", str(prompts), "--model", str(tiny("sd1")[0]), "--H", str(SIZE), "--W", str(SIZE),
            "--outdir", str(out), *FAST]
    assert cli.main(args) == 0
    assert [_parameters(out / "samples" / f"{i:05}.png")["prompt"] for i in range(2)] == ["the cat", "a hat"]


@pytest.fixture
def pictures(tmp_path):
    make_image().save(tmp_path / "image.png")
    make_mask().save(tmp_path / "mask.png")
    Image.new("L", (SIZE, SIZE // 2)).save(tmp_path / "small-mask.png")
    return tmp_path


def test_img2img_and_inpaint_commands(tiny, pictures):
    image = str(pictures / "image.png")
    assert cli.main(["img2img", "--init-img", image, "--prompt", "the cat", "--model", str(tiny("sd1")[0]),
                     "--strength", "0.5", "--outdir", str(pictures / "i2i"), *FAST]) == 0
    params = _parameters(pictures / "i2i" / "samples" / "00000.png")
    assert params["Sampler"] == "DDIM" and params["Denoising strength"] == "0.5"
    assert cli.main(["inpaint", "--init-img", image, "--mask", str(pictures / "mask.png"), "--prompt", "the cat",
                     "--model", str(tiny("sd1-inpaint")[0]), "--outdir", str(pictures / "inp"), *FAST]) == 0
    with Image.open(pictures / "inp" / "samples" / "00000.png") as result:
        assert result.size == (SIZE, SIZE)


def _error_cases(folder, pictures):
    image, mask = str(pictures / "image.png"), str(pictures / "mask.png")
    empty, binary = pictures / "empty.txt", pictures / "binary.txt"
    empty.write_text("\n  \n")
    binary.write_bytes(b"\xff\xfe\xfa")
    (pictures / "not-a-model.safetensors").write_bytes(b"")
    txt = ["txt2img", "--model", folder, "--H", "32", "--W", "32", "--ddim_steps", "4", "--device", "cpu"]
    i2i = ["img2img", "--model", folder, "--init-img", image, "--ddim_steps", "4", "--device", "cpu"]
    inp = ["inpaint", "--model", folder, "--init-img", image, "--mask", mask, "--ddim_steps", "4", "--device", "cpu"]
    return {
        "height": (txt + ["--H", "31"], "--H 31 is not a multiple of 2 (the VAE's downsampling factor"),
        "width": (txt + ["--W", "0"], "--W must be from 1 to"),
        "no steps": (txt + ["--ddim_steps", "0"], "must be an integer from 1"),
        "too many steps": (txt + ["--ddim_steps", "1001"], "from 1 to 1000"),
        "steps past the end": (txt + ["--ddim_steps", "600"], "past the end of the 1000-step schedule"),
        "eta": (txt + ["--ddim", "--ddim_eta", "-0.1"], "--ddim_eta must be >= 0"),
        "eta with plms": (txt + ["--ddim_eta", "0.5"], "--ddim_eta applies to the ddim sampler only"),
        "scale": (txt + ["--scale", "-2"], "--scale must be >= 0.0, got -2.0 (1 = no guidance"),
        "strength": (i2i + ["--strength", "1.5"], "--strength must be between 0.0 and 1.0"),
        "strength 1 compvis": (i2i + ["--strength", "1"], "--strength-rule: strength 1.0 with the compvis rule"),
        "empty prompt file": (txt + ["--from-file", str(empty)], "has no prompts"),
        "missing prompt file": (txt + ["--from-file", str(pictures / "nope.txt")], "cannot read the prompt file"),
        "binary prompt file": (txt + ["--from-file", str(binary)], "cannot read the prompt file"),
        "mask size": (inp[:-4] + ["--mask", str(pictures / "small-mask.png"), "--device", "cpu"],
                      "--mask: the image is 32x32 but the mask is 32x16"),
        "missing image": (i2i + ["--init-img", str(pictures / "nope.png")], "nope.png' does not exist"),
        "missing checkpoint": (["txt2img", "--ckpt", str(pictures / "nope.ckpt"), "--device", "cpu"],
                               "no such checkpoint file"),
        "empty checkpoint": (["txt2img", "--ckpt", str(pictures / "not-a-model.safetensors"), "--device", "cpu"],
                             "the file is empty"),
        "missing model folder": (["txt2img", "--model", str(pictures / "no-model"), "--device", "cpu"],
                                 "is not a local folder"),
        "missing tokenizer": (["txt2img", "--ckpt", str(pictures / "not-a-model.safetensors"), "--tokenizer",
                               str(pictures / "no-tok"), "--device", "cpu"], "--tokenizer"),
        "two models": (["txt2img", "--ckpt", str(pictures / "nope.ckpt"), "--model", folder, "--device", "cpu"],
                       "give one model"),
        "outdir is a file": (txt + ["--outdir", str(empty)], "is a file, not a folder"),
        "outdir below a file": (txt + ["--outdir", str(empty / "sub")], "cannot be created: "),
        "unknown flag": (txt + ["--steps", "4"], "unrecognized arguments: --steps"),
        "inpainting model for txt2img": (["txt2img", "--model", folder.replace("sd1", "sd1-inpaint"), "--H", "32",
                                          "--W", "32", "--device", "cpu"], "inpainting checkpoint"),
    }




def test_every_user_error_is_one_line_exit_2_and_writes_nothing(tiny, pictures, capsys):
    tiny("sd1-inpaint")
    folder = str(tiny("sd1")[0])
    capsys.readouterr()  # building the tiny models prints progress bars
    for name, (argv, message) in _error_cases(folder, pictures).items():
        out = pictures / f"out-{name.replace(' ', '-')}"
        if "--outdir" not in argv:
            argv = argv + ["--outdir", str(out)]
        assert cli.main(argv) == 2, name
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, (name, err)
        assert not out.exists(), name


def test_single_file_without_tokenizer_offline_says_how_to_get_one(tiny, tmp_path, capsys):
    checkpoint = tmp_path / "tiny-sd1.safetensors"
    StableDiffusion.from_pretrained(tiny("sd1")[0]).save_single_file(checkpoint)
    assert cli.main(["txt2img", "--ckpt", str(checkpoint), "--device", "cpu", "--outdir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pass tokenizer=" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when there is no GPU")
def test_cuda_without_a_gpu_says_how_to_run_on_the_cpu(tiny, tmp_path, capsys):
    assert cli.main(_txt2img_args(tiny("sd1")[0], tmp_path / "o")[:-2] + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--device cpu" in err
    assert not (tmp_path / "o").exists()


def test_out_of_gpu_memory_names_the_memory_options(tiny, tmp_path, capsys, monkeypatch):
    from diffusion_notes import pipeline

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pipeline, "generate", out_of_memory)
    assert cli.main(_txt2img_args(tiny("sd1")[0], tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: out of GPU memory") and "--slice-vae" in err[-1] and "--tile-vae" in err[-1]
    assert not (tmp_path / "o").exists()


def test_module_entry_point(tmp_path):
    """The dispatcher runs the command in a fresh interpreter: exit status 2 and one line for a bad size."""
    done = subprocess.run([sys.executable, "-m", "diffusion_notes", "txt2img", "--model", str(tmp_path), "--H", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == "error: --H must be from 1 to 1048576, got 0 (pixels)"

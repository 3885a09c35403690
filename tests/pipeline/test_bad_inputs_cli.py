"""Bad inputs on the command line: one line on stderr naming the flag, exit status 2, nothing written;
Ctrl-C: exit 130 and one line; a library bug keeps its traceback.

The flags become the settings objects of ``diffusion_notes.settings`` (tested on their own in
tests/test_bad_inputs_settings.py); here: that each error comes back under its flag, before the model
loads where the issue asks for it (output folder, sizes), and that a damaged model never leaves a
black PNG behind.
"""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from diffusion_notes import cli
from diffusion_notes.errors import SettingsError
from diffusion_notes.images import parse_parameters, save_png
from diffusion_notes.stable_diffusion import StableDiffusion

from .helpers import SIZE, make_image

FAST = ["--ddim_steps", "2", "--device", "cpu", "--ddim"]


@pytest.fixture
def run(tiny, tmp_path, capsys):
    """``run(command, *flags, outdir=...) -> (status, stderr lines)`` with the tiny SD 1.x folder as --model."""
    folder = str(tiny("sd1")[0])
    capsys.readouterr()

    def go(command, *flags, model=True, outdir=None):
        outdir = outdir or tmp_path / "out"
        argv = [command, *(["--model", folder] if model else []), "--outdir", str(outdir), *FAST, *flags]
        if command == "txt2img" and "--H" not in flags:
            argv += ["--H", str(SIZE), "--W", str(SIZE)]
        status = cli.main(argv)
        return status, capsys.readouterr().err.strip().splitlines()

    return go


def _refused(result, *fragments, after_loading=False):
    """Exit 2 and one error line; before loading it is the only line (after it, notes and progress may precede)."""
    status, lines = result
    assert status == 2 and (after_loading or len(lines) == 1) and "error: " in lines[-1], lines
    assert not any("Traceback" in line for line in lines)
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


@pytest.fixture
def no_loading(monkeypatch):
    """The model must not be loaded: these refusals come first."""
    monkeypatch.setattr(cli, "_load", lambda *a: pytest.fail("the model was loaded before the refusal"))


FLAGS = {
    "scale nan": (["--scale", "nan"], "--scale must be a finite number"),
    "scale inf": (["--scale", "inf"], "--scale must be a finite number"),
    "scale negative": (["--scale", "-1"], "--scale must be >= 0.0"),
    "eta nan": (["--ddim_eta", "nan"], "--ddim_eta must be >= 0 and finite"),
    "eta inf": (["--ddim_eta", "inf"], "--ddim_eta must be >= 0 and finite"),
    "seed 2**32": (["--seed", "4294967296"], "--seed must be from -1 to 4294967295"),
    "seed -2": (["--seed", "-2"], "--seed must be from -1 to 4294967295"),
    "seeds run past 2**32 - 1": (["--seed", "4294967295", "--n_iter", "2"], "--seed must leave room"),
    "n_iter 0": (["--n_iter", "0"], "--n_iter must be at least 1"),
    "n_samples 0": (["--n_samples", "0"], "--n_samples must be from 1"),
    "height negative": (["--H", "-8", "--W", "32"], "--H must be from 1"),
    "height off the grid": (["--H", "33", "--W", "32"], "--H 33 is not a multiple of 2"),
    "too large for memory": (["--H", "262144", "--W", "262144"], "GiB"),
    "steps 0": (["--ddim_steps", "0"], "--ddim_steps"),
    "unknown schedule": (["--schedule", "cosine"], "invalid choice"),
    "prompt file is a folder": (["--from-file", "."], "cannot read the prompt file"),
    "config without ckpt": (["--config", "v1-inference.yaml"], "--config describes a --ckpt"),
}


@pytest.mark.parametrize("case", FLAGS)
def test_bad_flags_name_the_flag_before_loading(run, no_loading, tmp_path, case):
    flags, fragment = FLAGS[case]
    _refused(run("txt2img", *flags), fragment)
    assert not (tmp_path / "out").exists()


def test_img2img_flags(run, no_loading, tmp_path):
    make_image().save(tmp_path / "image.png")
    (tmp_path / "words.png").write_text("not a picture")
    image = ["--init-img", str(tmp_path / "image.png")]
    _refused(run("img2img", *image, "--strength", "nan"), "--strength must be a finite number")
    _refused(run("img2img", *image, "--strength", "inf"), "--strength must be a finite number")
    _refused(run("img2img", "--init-img", str(tmp_path / "words.png")), "--init-img: cannot read image")
    Image.new("RGB", (SIZE + 1, SIZE)).save(tmp_path / "odd.png")
    _refused(run("img2img", "--init-img", str(tmp_path / "odd.png")), "--init-img", "multiples of 2")
    Image.new("L", (SIZE, SIZE)).save(tmp_path / "black.png")
    _refused(run("inpaint", *image, "--mask", str(tmp_path / "black.png")), "nothing to repaint")


def test_model_paths_in_each_others_place(run, no_loading, tiny, tmp_path):
    folder = tiny("sd1")[0]
    _refused(run("txt2img", "--ckpt", str(folder), model=False), "is a folder", "use --model")
    _refused(run("txt2img", "--model", str(folder / "unet" / "config.json"), model=False), "--model", "use --ckpt")
    os.mkfifo(tmp_path / "pipe.safetensors")
    _refused(run("txt2img", "--ckpt", str(tmp_path / "pipe.safetensors"), model=False), "not a regular file")


def test_the_output_folder_is_checked_before_loading(run, no_loading, tmp_path):
    (tmp_path / "a-file").write_text("x")
    _refused(run("txt2img", outdir=tmp_path / "a-file" / "deeper"), "cannot be created", "a-file is a file")
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / "samples").write_text("x")
    _refused(run("txt2img", outdir=tmp_path / "out2"), "samples is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_output_folder(run, no_loading, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _refused(run("txt2img", outdir=locked / "out"), "not writable")


def test_a_random_seed_is_reported_and_written(run, tmp_path):
    status, lines = run("txt2img", "--seed", "-1")
    assert status == 0
    reported = int(next(line for line in lines if "random seed" in line).split("random seed ")[1])
    with Image.open(tmp_path / "out" / "samples" / "00000.png") as picture:
        assert parse_parameters(picture.text["parameters"])["Seed"] == str(reported)


def _damaged_checkpoint(tiny, tmp_path, part: str):
    sd = StableDiffusion.from_pretrained(tiny("sd1")[0], torch_dtype=torch.float32)
    with torch.no_grad():
        (sd.unet.out[2].weight if part == "unet" else sd.vae.decoder.conv_out.bias).fill_(float("nan"))
    path = tmp_path / f"nan-{part}.safetensors"
    sd.save_single_file(path)
    return ["--ckpt", str(path), "--tokenizer", str(tiny("sd1")[0])]


def test_nan_weights_never_leave_a_black_png(run, tiny, tmp_path):
    model = _damaged_checkpoint(tiny, tmp_path, "unet")
    _refused(run("txt2img", *model, model=False), "NaN/inf", "out.2.weight", after_loading=True)
    assert not list((tmp_path / "out").rglob("*.png"))


def test_allow_non_finite_saves_with_a_loud_warning(run, tiny, tmp_path):
    from diffusion_notes.pipeline import NonFiniteOutputWarning

    model = _damaged_checkpoint(tiny, tmp_path, "vae")
    with pytest.warns(NonFiniteOutputWarning, match="NaN/inf"):  # on the command line: one "warning: " line
        status, lines = run("txt2img", *model, "--allow-non-finite", model=False)
    assert status == 0
    assert (tmp_path / "out" / "samples" / "00000.png").is_file()


def test_ctrl_c_exits_130_with_one_line_and_no_partial_file(run, tmp_path, monkeypatch):
    real = cli._generate
    calls = []

    def generate_then_interrupt(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(cli, "_generate", generate_then_interrupt)
    status, lines = run("txt2img", "--n_iter", "3")
    assert status == 130 and lines[-1] == f"interrupted: 1 image(s) saved to {tmp_path / 'out' / 'samples'}; no " \
        "partial file was left"
    assert not any("Traceback" in line for line in lines)
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == ["00000.png"]


def test_an_interrupted_png_write_leaves_nothing(tmp_path, monkeypatch):
    picture = make_image()

    def write_half_then_interrupt(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG\r\n\x1a\n half a picture")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", write_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_png(picture, tmp_path / "00000.png", "parameters")
    assert list(tmp_path.iterdir()) == []


def test_a_library_bug_keeps_its_traceback(run, monkeypatch):
    from diffusion_notes import pipeline

    def bug(*args, **kwargs):
        raise ValueError("an internal mistake")

    monkeypatch.setattr(pipeline, "generate", bug)
    with pytest.raises(ValueError, match="an internal mistake"):
        run("txt2img")


@pytest.mark.parametrize("option, message, expected", [
    ("guidance_scale", "guidance_scale must be >= 0.0, got -1.0", "--scale must be >= 0.0, got -1.0"),
    ("steps", "CompVis 'uniform' spacing with 3 steps", "--ddim_steps: CompVis 'uniform' spacing with 3 steps"),
    ("height", "height 31 is not a multiple of 2", "--H 31 is not a multiple of 2"),
    ("image", "the image is 33x32", "--init-img: the image is 33x32"),
    ("--from-file", "cannot read the prompt file x", "cannot read the prompt file x"),
    ("spacing", "unknown timestep spacing", "unknown timestep spacing"),  # no flag: the API's own words
])
def test_settings_errors_come_back_under_their_flag(option, message, expected):
    assert cli.flag_message(SettingsError(option, message)) == expected


@pytest.mark.parametrize("command", ["txt2img", "img2img", "inpaint"])
def test_the_flags_defaults_are_the_pipelines(command):
    """One place for each default: the flags' defaults equal what the pipeline function does when the
    keyword is left out (read from the request a call without them builds)."""
    from diffusion_notes import pipeline
    from diffusion_notes.settings import Request

    built = []
    real = pipeline.generate
    pipeline.generate = lambda sd, request, *a, **k: built.append(request)
    try:
        image = torch.zeros(1, 3, 8, 8)
        args = {"txt2img": (), "img2img": (image,), "inpaint": (image, torch.ones(1, 1, 8, 8))}[command]
        getattr(pipeline, command)(None, *args, "a cat")
    finally:
        pipeline.generate = real
    request: Request = built[0]
    used = dict(sampler=request.sampler.sampler, steps=request.sampler.steps,
                sigma_schedule=request.sampler.sigma_schedule, guidance_scale=request.conditioning.guidance_scale,
                num_images=request.conditioning.num_images)
    if command != "txt2img":
        used.update(strength=request.strength.strength, strength_rule=request.strength.rule)
    assert cli.pipeline_defaults(command) == used


def test_a_compvis_plms_command_line_with_ddim_eta_zero_runs(tiny, tmp_path):
    """CompVis's scripts/txt2img.py always passes --ddim_eta (default 0.0); with --plms that must run."""
    status = cli.main(["txt2img", "--model", str(tiny("sd1")[0]), "--outdir", str(tmp_path / "out"), "--plms",
                       "--ddim_eta", "0.0", "--ddim_steps", "2", "--device", "cpu", "--H", str(SIZE), "--W", str(SIZE)])
    assert status == 0
    assert (tmp_path / "out" / "samples" / "00000.png").is_file()


def test_pngs_get_the_permissions_of_a_plain_open_under_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_png(make_image(), tmp_path / "00000.png", "parameters")
        assert (path.stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        assert (save_png(make_image(), tmp_path / "00001.png").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.png", "00001.png"]  # no temporary file left

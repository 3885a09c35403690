"""``python -m diffusion_notes txt2img --prompt "a handwritten seven"`` with no checkpoint: the shipped miniature."""

from __future__ import annotations

from PIL import Image

from diffusion_notes import cli
from diffusion_notes.images import parse_parameters
from diffusion_notes.mini_sd import MODEL_NAME, judge


def test_txt2img_without_a_checkpoint_uses_the_miniature_and_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["txt2img", "--prompt", "a handwritten seven", "--outdir", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"using the shipped miniature {MODEL_NAME}" in err and "running on the CPU" not in err
    with Image.open(out / "samples" / "00000.png") as image:
        params = parse_parameters(image.text["parameters"])
        assert image.size == (32, 32)  # the model's native size is the default
        pixels = [image.convert("RGB")]
    assert params["Model"] == MODEL_NAME and params["Size"] == "32x32" and params["Steps"] == "50"
    assert judge.predicted_digits(pixels).tolist() == [7]

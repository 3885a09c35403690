"""The attribute judge reads fresh real renders correctly (issue 20 asks at least 98% per attribute).

Oracles: the scenes that made the images (their attributes are the truth), on seeds other than
the judge's calibration seed; permuted truths as a check that the score can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_notes.mini_sd_shapes import judge, world


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("split,seed", [("all", 7), ("held_out", 8)])
def test_judge_reads_fresh_renders_at_least_98_percent_per_attribute(split, seed):
    accuracy = judge.validate(seed=seed, n=1500, split=split)
    # measured: colour, shape, size 1.0; position 0.997-0.9995 (a large triangle's centroid sits below its box)
    assert min(accuracy[k] for k in judge.ATTRIBUTES) >= 0.98, accuracy


def test_judge_is_not_fooled_by_wrong_labels():
    generator = torch.Generator().manual_seed(9)
    scenes = world.sample_scenes(600, generator, split="all")
    images = world.render(scenes)
    shifted = world.Scenes(colour=(scenes.colour + 1) % 6, shape=(scenes.shape + 1) % 4,
                           position=(scenes.position + 1) % 5, size=1 - scenes.size, rgb=scenes.rgb,
                           centre=scenes.centre, width=scenes.width, background=scenes.background)
    wrong = judge.accuracy(images, shifted)
    assert max(wrong[k] for k in judge.ATTRIBUTES) < 0.02, wrong
    # blank images: one colour everywhere, nothing to read as "large"
    blank = torch.full((4, 3, 32, 32), -0.85)
    assert judge.features(blank)["area"].max() < 1


def test_pipeline_arrays_and_uint8_pixels_read_like_tensors():
    scenes = world.sample_scenes(200, torch.Generator().manual_seed(10), split="all")
    x = world.render(scenes)
    unit = ((x + 1) / 2).permute(0, 2, 3, 1).numpy()
    from_tensor, from_unit = judge.judge(x), judge.judge(unit)
    from_uint8 = judge.judge(np.round(unit * 255).astype(np.uint8))
    for k in judge.ATTRIBUTES:
        assert (from_tensor[k] == from_unit[k]).all()
        assert (from_tensor[k] == from_uint8[k]).mean() >= 0.99


def test_validating_on_the_calibration_seed_is_refused():
    with pytest.raises(ValueError, match="calibration seed"):
        judge.validate(seed=judge.CALIBRATION_SEED)


def test_judge_tolerates_a_slight_blur_but_not_a_heavy_one():
    # the shape reading must survive the softness of a good decoder (Gaussian sigma 0.5 px) and must not
    # call every blob right (sigma 1 px makes small shapes ambiguous blobs)
    import torch.nn.functional as F

    scenes = world.sample_scenes(400, torch.Generator().manual_seed(11), split="all")
    x = world.render(scenes)

    def blur(sigma):
        r = torch.arange(-3, 4, dtype=torch.float32)
        k = torch.exp(-r**2 / (2 * sigma**2))
        k = (k / k.sum())
        k2 = (k[:, None] * k[None, :]).expand(3, 1, 7, 7)
        return F.conv2d(F.pad(x, (3, 3, 3, 3), mode="replicate"), k2, groups=3)

    slight, heavy = judge.accuracy(blur(0.5), scenes), judge.accuracy(blur(1.0), scenes)
    assert min(slight[k] for k in judge.ATTRIBUTES) >= 0.98, slight
    assert heavy["shape"] < 0.95, heavy  # measured 0.886 on 1000 scenes (prototypes/shapes/logs/judge_blur.log)

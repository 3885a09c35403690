"""The coloured-shapes world: determinism, the held-out pairs, the geometry, the captions.

Oracles: the issue's own lists (held-out pairs, RGB values, example captions) written out here;
closed-form areas and centroids of a disc, a square, a triangle and a cross; binomial bounds for
the caption-dropout rate; transformers' CLIP tokenizer for the vocabulary.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_notes.mini_sd_shapes import world
from diffusion_notes.mini_sd_shapes.world import COLOURS, SHAPES

# Issue 20's held-out pairs and colours, copied from the issue, not from the module.
ISSUE_HELD_OUT = {("green", "triangle"), ("yellow", "square"), ("blue", "cross"), ("purple", "circle"),
                  ("orange", "triangle")}
ISSUE_RGB = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 255), "yellow": (240, 230, 40),
             "purple": (170, 60, 230), "orange": (255, 140, 0)}


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _draw(seed, n=64, split="train"):
    generator = torch.Generator().manual_seed(seed)
    scenes = world.sample_scenes(n, generator, split=split)
    return scenes, world.render(scenes), world.sample_captions(scenes, generator)


def test_same_seed_same_images_and_captions_other_seed_differs():
    s1, x1, c1 = _draw(3)
    s2, x2, c2 = _draw(3)
    assert torch.equal(x1, x2) and c1 == c2 and torch.equal(s1.centre, s2.centre)
    _, x3, c3 = _draw(4)
    assert not torch.equal(x1, x3) and c1 != c3
    assert x1.shape == (64, 3, 32, 32) and x1.min() >= -1 and x1.max() <= 1


def test_training_sampler_never_draws_a_held_out_pair_but_draws_every_other():
    scenes = world.sample_scenes(20000, torch.Generator().manual_seed(0), split="train")
    drawn = {(COLOURS[c], SHAPES[s]) for c, s in zip(scenes.colour.tolist(), scenes.shape.tolist())}
    everything = {(c, s) for c in ISSUE_RGB for s in ("circle", "square", "triangle", "cross")}
    assert drawn == everything - ISSUE_HELD_OUT  # 19 pairs, none held out
    assert {c for c, _ in drawn} == set(ISSUE_RGB) and {s for _, s in drawn} == set(SHAPES)
    held = world.sample_scenes(2000, torch.Generator().manual_seed(0), split="held_out")
    assert {(COLOURS[c], SHAPES[s]) for c, s in zip(held.colour.tolist(), held.shape.tolist())} == ISSUE_HELD_OUT


def test_colours_background_and_sizes_are_the_issues():
    scenes = world.sample_scenes(1000, torch.Generator().manual_seed(1), split="all")
    issue = torch.tensor([ISSUE_RGB[COLOURS[c]] for c in scenes.colour.tolist()], dtype=torch.float32)
    assert (scenes.rgb - issue).abs().max() <= 15 + 1e-4  # small jitter
    assert scenes.background.min() >= 10 and scenes.background.max() <= 35
    small, large = scenes.width[scenes.size == 0], scenes.width[scenes.size == 1]
    assert 7 <= small.min() and small.max() <= 9 and 14 <= large.min() and large.max() <= 16  # about 8 and 15 px
    x = (world.render(scenes) + 1) * 127.5
    corner = x[:, :, 0, 0]  # never covered: every box stays half a pixel inside
    assert torch.allclose(corner, scenes.background[:, None].expand(-1, 3), atol=1e-3)
    # the fully covered pixels of an object are exactly its colour
    alpha = world.coverage(scenes)
    full = alpha == 1
    assert full.sum(dim=(1, 2)).min() > 0
    i = full.flatten(1).float().argmax(1)
    assert torch.allclose(x.flatten(2)[torch.arange(len(scenes)), :, i], scenes.rgb, atol=1e-3)


@pytest.mark.parametrize("shape,area,centroid_dy", [
    ("circle", lambda w: math.pi * w**2 / 4, lambda w: 0.0),
    ("square", lambda w: w**2, lambda w: 0.0),
    ("triangle", lambda w: w**2 / 2, lambda w: w / 6),  # apex up: centroid a third of the way up from the base
    ("cross", lambda w: 2 * w * w / 3 - (w / 3) ** 2, lambda w: 0.0),
])
def test_antialiased_coverage_matches_the_closed_form_area_and_centroid(shape, area, centroid_dy):
    k = SHAPES.index(shape)
    scenes = world.sample_scenes(200, torch.Generator().manual_seed(2), split="all", shape=k)
    alpha = world.coverage(scenes, supersample=16).double()
    w = scenes.width.double()
    measured = alpha.sum(dim=(1, 2))
    # sub-pixel sampling (spacing h = 1/16 px) misplaces each edge by at most h/2 on average: an area
    # error well under perimeter * h, and every perimeter here is at most 4 widths
    assert ((measured - area(w)).abs() <= 4 * w / 16).all()
    assert ((measured - area(w)).abs() / area(w)).mean() < 0.01
    ys = torch.arange(32, dtype=torch.float64) + 0.5
    cy = (alpha.sum(dim=2) * ys).sum(1) / measured
    cx = (alpha.sum(dim=1) * ys).sum(1) / measured
    assert (cy - scenes.centre[:, 1].double() - centroid_dy(w)).abs().max() < 0.05
    assert (cx - scenes.centre[:, 0].double()).abs().max() < 0.05
    # antialiased: partly covered pixels exist
    assert ((alpha > 0.05) & (alpha < 0.95)).any(dim=(1, 2)).all()


def test_positions_are_in_their_region():
    scenes = world.sample_scenes(2000, torch.Generator().manual_seed(5), split="all")
    x, y = scenes.centre.unbind(1)
    left, right, top, bottom, center = (scenes.position == k for k in range(5))
    assert (x[left] < 12).all() and (x[right] > 20).all() and (y[top] < 12).all() and (y[bottom] > 20).all()
    assert ((x[center] - 16).abs() <= 1.5).all() and ((y[center] - 16).abs() <= 1.5).all()


def test_captions_read_like_the_issues_examples():
    blue, red, green = COLOURS.index("blue"), COLOURS.index("red"), COLOURS.index("green")
    triangle, cross, circle = SHAPES.index("triangle"), SHAPES.index("cross"), SHAPES.index("circle")
    top, center, left = world.POSITIONS.index("top"), world.POSITIONS.index("center"), world.POSITIONS.index("left")
    assert world.caption(blue, triangle, top, 0, template=0) == "a small blue triangle at the top"
    assert world.caption(red, cross, center, 1, template=1) == "large red cross in the middle"
    assert world.caption(green, circle, left, None, template=2) == "a picture of a green circle on the left"
    assert world.caption(COLOURS.index("orange"), None, None, None) == "an orange shape"


def test_sampled_captions_name_only_the_scenes_attributes_and_drop_about_ten_percent():
    generator = torch.Generator().manual_seed(6)
    scenes = world.sample_scenes(4000, generator, split="all")
    captions = world.sample_captions(scenes, generator)
    empty = sum(c == "" for c in captions)
    assert abs(empty - 400) < 4 * math.sqrt(4000 * 0.1 * 0.9)  # 10% empty, within 4 sigma
    vocab = set(world.WORDS)
    for i, c in enumerate(captions):
        words = c.replace(",", "").split()
        assert set(words) <= vocab
        named_colours = [w for w in words if w in COLOURS]
        named_shapes = [w for w in words if w in SHAPES]
        assert named_colours in ([], [COLOURS[scenes.colour[i]]]) and named_shapes in ([], [SHAPES[scenes.shape[i]]])
    some = [c for c in captions if c]
    assert any("shape" in c.split() for c in some) and any("small" not in c and "large" not in c for c in some)
    assert len(set(captions)) > 300  # several phrasings


def test_every_caption_word_is_one_clip_token(tmp_path):
    # issue 20: a merge "r i" (from "right") once broke "triangle" into 7 tokens
    from transformers import CLIPTokenizer

    from diffusion_notes.training.tokenizer import build_word_tokenizer

    build_word_tokenizer(world.WORDS, tmp_path)  # raises if a word is not one token
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path))
    ids = tokenizer("a small green triangle at the right", add_special_tokens=False).input_ids
    assert len(ids) == 7
    # the trap is real: in the naive order "red" precedes "green" and its merge "r e" splits "green"
    naive = list(dict.fromkeys(["red", "green", "top", "bottom", "right", "triangle"]))
    with pytest.raises(ValueError, match="green"):
        build_word_tokenizer(naive, tmp_path / "naive")
    build_word_tokenizer(world.merge_safe_order(naive), tmp_path / "ordered")

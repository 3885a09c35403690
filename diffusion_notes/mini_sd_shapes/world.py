r"""The coloured-shapes world of the compositional miniature (issue 20): scenes, images and captions.

One object on a plain dark grey background, 32x32 RGB. Every scene has four attributes:

* **colour**: one of :data:`COLOURS` (RGB values below), each channel jittered by up to
  :data:`COLOUR_JITTER` levels;
* **shape**: circle, square, triangle (apex up) or cross (arms a third of the width);
* **position**: the object's box centred in the left, right, top or bottom half's middle or in the
  image centre (:data:`POSITION_CENTRES`), jittered by up to :data:`POSITION_JITTER` pixels and kept
  inside the image;
* **size**: the box is :data:`SIZE_RANGES` pixels across (about 8 or 15).

The background is grey at a level drawn from 10..35 of 255 per image. Images are antialiased by
drawing large and downsampling: each pixel's coverage is the fraction of a ``supersample x
supersample`` grid of sub-pixel centres inside the shape (a box filter), and the pixel is
``background + coverage * (colour - background)``.

Five colour-shape pairs (:data:`HELD_OUT`) are never produced by the training sampler
(:func:`sample_scenes` with ``split="train"``); every colour and every shape still appears with
other partners, so a model that names them correctly has composed words it learned apart.

Captions (:func:`caption`) come from a small grammar with several phrasings; each of size, colour,
shape and position may be left out (the picture then shows a random value), and
:func:`sample_captions` replaces a caption by ``""`` with probability ``p_uncond`` (10% by default),
the unconditional model classifier-free guidance needs (Ho & Salimans 2022).

Every random choice comes from an explicit ``torch.Generator``, so a seed fixes the scenes, the
images and the captions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["IMAGE_SIZE", "COLOURS", "RGB", "SHAPES", "POSITIONS", "SIZES", "HELD_OUT", "POSITION_CENTRES",
           "SIZE_RANGES", "Scenes", "allowed_pairs", "sample_scenes", "coverage", "render", "caption", "sample_captions",
           "WORDS", "POSITION_PHRASES", "TEMPLATES", "merge_safe_order"]

IMAGE_SIZE = 32
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
#: The colours' RGB values (0..255), as the issue fixes them.
RGB = ((230, 40, 40), (40, 200, 60), (50, 90, 255), (240, 230, 40), (170, 60, 230), (255, 140, 0))
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = ("left", "right", "top", "bottom", "center")
SIZES = ("small", "large")
#: Colour-shape pairs the training sampler never draws.
HELD_OUT = (("green", "triangle"), ("yellow", "square"), ("blue", "cross"), ("purple", "circle"),
            ("orange", "triangle"))
#: (x, y) in pixels of each position's centre, pixel (i, j) covering [j, j+1) x [i, i+1).
POSITION_CENTRES = ((8.0, 16.0), (24.0, 16.0), (16.0, 8.0), (16.0, 24.0), (16.0, 16.0))
POSITION_JITTER = 1.5
#: (min, max) width of the object's box in pixels, per size.
SIZE_RANGES = ((7.0, 9.0), (14.0, 16.0))
COLOUR_JITTER = 15.0
BACKGROUND_RANGE = (10.0, 35.0)


@dataclass(frozen=True)
class Scenes:
    """A batch of ``n`` scenes: attribute indices (into :data:`COLOURS`, :data:`SHAPES`,
    :data:`POSITIONS`, :data:`SIZES`) and the continuous draws that make each picture unique."""

    colour: torch.Tensor  # (n,) long
    shape: torch.Tensor  # (n,) long
    position: torch.Tensor  # (n,) long
    size: torch.Tensor  # (n,) long
    rgb: torch.Tensor  # (n, 3) float, 0..255, jittered
    centre: torch.Tensor  # (n, 2) float, (x, y) of the object's box centre in pixels
    width: torch.Tensor  # (n,) float, the box's width (= height) in pixels
    background: torch.Tensor  # (n,) float, 0..255 grey level

    def __len__(self) -> int:
        return len(self.colour)


def allowed_pairs(split: str = "train") -> list[tuple[int, int]]:
    """(colour, shape) index pairs of ``split``: "train" (19 pairs), "held_out" (5) or "all" (24)."""
    held = {(COLOURS.index(c), SHAPES.index(s)) for c, s in HELD_OUT}
    pairs = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
    if split == "train":
        return [p for p in pairs if p not in held]
    if split == "held_out":
        return [p for p in pairs if p in held]
    if split == "all":
        return pairs
    raise ValueError(f"split must be 'train', 'held_out' or 'all', not {split!r}")


def sample_scenes(n: int, generator: torch.Generator, split: str = "train", *, colour=None, shape=None,
                  position=None, size=None) -> Scenes:
    """``n`` random scenes whose colour-shape pair is uniform over ``split``'s pairs (see
    :func:`allowed_pairs`), position and size uniform. An attribute given by index (int or (n,)
    tensor) is fixed instead; a fixed colour-shape pair is not checked against ``split``."""
    pairs = torch.tensor(allowed_pairs(split))
    pick = pairs[torch.randint(0, len(pairs), (n,), generator=generator)]
    drawn = {
        "colour": pick[:, 0], "shape": pick[:, 1],
        "position": torch.randint(0, len(POSITIONS), (n,), generator=generator),
        "size": torch.randint(0, len(SIZES), (n,), generator=generator),
    }
    given = {"colour": colour, "shape": shape, "position": position, "size": size}
    attrs = {k: drawn[k] if given[k] is None else torch.as_tensor(given[k]).long().expand(n).clone() for k in drawn}
    u = torch.rand(n, 7, generator=generator)  # jitters: 3 colour, 2 position, 1 width, 1 background
    rgb = (torch.tensor(RGB, dtype=torch.float32)[attrs["colour"]] + (2 * u[:, :3] - 1) * COLOUR_JITTER).clamp(0, 255)
    lo, hi = torch.tensor(SIZE_RANGES)[attrs["size"]].unbind(1)
    width = lo + u[:, 5] * (hi - lo)
    half = width[:, None] / 2
    centre = torch.tensor(POSITION_CENTRES)[attrs["position"]] + (2 * u[:, 3:5] - 1) * POSITION_JITTER
    centre = torch.minimum(torch.maximum(centre, half + 0.5), IMAGE_SIZE - 0.5 - half)  # the box stays inside
    background = BACKGROUND_RANGE[0] + u[:, 6] * (BACKGROUND_RANGE[1] - BACKGROUND_RANGE[0])
    return Scenes(rgb=rgb, centre=centre, width=width, background=background, **attrs)


def _inside(shape: int, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Whether the point (dx, dy) from the box centre lies in ``SHAPES[shape]`` of half-width ``r``."""
    ax, ay = dx.abs(), dy.abs()
    if SHAPES[shape] == "circle":
        return dx**2 + dy**2 <= r**2
    if SHAPES[shape] == "square":
        return (ax <= r) & (ay <= r)
    if SHAPES[shape] == "triangle":  # apex (0, -r), base from (-r, r) to (r, r): half-width (dy + r) / 2
        return (dy <= r) & (ax <= (dy + r) / 2)
    arm = r / 3  # a cross with arms a third of the width
    return ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r))


def coverage(scenes: Scenes, supersample: int = 8) -> torch.Tensor:
    """(n, 32, 32) fraction of each pixel inside the object: the shape drawn on a grid ``supersample``
    times finer, then averaged over each pixel's ``supersample**2`` sub-pixels (box-filter downsampling)."""
    s = IMAGE_SIZE * supersample
    grid = (torch.arange(s, dtype=torch.float32) + 0.5) / supersample  # sub-pixel centres, in pixels
    dx = grid[None, None, :] - scenes.centre[:, 0, None, None]
    dy = grid[None, :, None] - scenes.centre[:, 1, None, None]
    r = (scenes.width / 2)[:, None, None]
    inside = torch.zeros(len(scenes), s, s)
    for k in range(len(SHAPES)):  # each shape's test only on its own scenes
        rows = (scenes.shape == k).nonzero().flatten()
        if len(rows):
            inside[rows] = _inside(k, dx[rows], dy[rows], r[rows]).float()
    return inside.reshape(-1, IMAGE_SIZE, supersample, IMAGE_SIZE, supersample).mean(dim=(2, 4))


def render(scenes: Scenes, supersample: int = 8) -> torch.Tensor:
    """(n, 3, 32, 32) images in [-1, 1] (Stable Diffusion's range): the object's colour blended over the
    grey background by its antialiased :func:`coverage`."""
    alpha = coverage(scenes, supersample)[:, None]
    background = scenes.background[:, None, None, None]
    pixels = background + alpha * (scenes.rgb[:, :, None, None] - background)
    return pixels / 127.5 - 1.0


# ---- captions -------------------------------------------------------------------------------------

#: Phrasings of each position.
POSITION_PHRASES = (("on the left", "at the left"), ("on the right", "at the right"), ("at the top",),
                    ("at the bottom",), ("in the middle", "in the center"))
#: Caption phrasings: ``{obj}`` is "[size] [colour] shape-or-'shape'", ``{a}`` its article, ``{where}``
#: the position phrase (templates with ``{where}`` are used only when the position is named).
TEMPLATES = ("{a} {obj} {where}", "{obj} {where}", "a picture of {a} {obj} {where}", "{where}, {a} {obj}",
             "{a} {obj}", "{obj}", "a picture of {a} {obj}")
_WITH_POSITION, _WITHOUT_POSITION = (0, 1, 2, 3), (4, 5, 6)

def _first_merge_inside(word: str, other: str) -> bool:
    """Whether ``other``'s first merge (``other[0] other[1]``, with ``</w>`` if ``other`` has two letters)
    can apply somewhere inside ``word`` other than at its start."""
    for i in range(1, len(word) - 1):
        at_end = i + 2 == len(word)
        if word[i : i + 2] == other[:2] and at_end == (len(other) == 2):
            return True
    return False


def merge_safe_order(words) -> tuple[str, ...]:
    """``words`` reordered so that :func:`diffusion_notes.training.build_word_tokenizer` makes each one
    token. Byte-pair encoding applies the lowest-ranked merge first, and the builder ranks merges in
    word order; if "red" comes before "green", the merge "r e" (from "red") fires inside "green"
    before "g r" and "green" never becomes one symbol (issue 20 met the same with "right" and
    "triangle"). So a word must come before every word whose first merge occurs inside it: a
    topological order of that relation (Kahn's algorithm, ties in the given order)."""
    words = list(dict.fromkeys(words))
    before = {w: {v for v in words if v != w and _first_merge_inside(w, v)} for w in words}  # w before each v
    waiting = {v: sum(v in after for after in before.values()) for v in words}
    order = []
    while len(order) < len(words):
        ready = [w for w in words if waiting[w] == 0 and w not in order]
        if not ready:
            raise ValueError(f"no merge-safe order exists for {sorted(set(words) - set(order))}")
        order.append(ready[0])
        for v in before[ready[0]]:
            waiting[v] -= 1
    return tuple(order)


#: Every word a caption can use, in an order that makes each one CLIP token: the tokenizer's vocabulary.
WORDS = merge_safe_order(["a", "an", "picture", "of", "shape", *SIZES, *COLOURS, *SHAPES]
                         + [w for phrases in POSITION_PHRASES for p in phrases for w in p.split()])


def caption(colour: int | None, shape: int | None, position: int | None, size: int | None,
            template: int = 0, phrase: int = 0) -> str:
    """The caption naming the given attributes (``None`` = left out). ``template`` indexes the
    phrasings that fit (:data:`TEMPLATES` with a position if one is named, without otherwise, taken
    modulo their number); ``phrase`` picks among the position's phrasings, modulo their number."""
    words = [SIZES[size] if size is not None else None, COLOURS[colour] if colour is not None else None,
             SHAPES[shape] if shape is not None else "shape"]
    obj = " ".join(w for w in words if w)
    article = "an" if obj[0] in "aeiou" else "a"
    if position is None:
        fmt = TEMPLATES[_WITHOUT_POSITION[template % len(_WITHOUT_POSITION)]]
        return fmt.format(a=article, obj=obj)
    phrases = POSITION_PHRASES[position]
    fmt = TEMPLATES[_WITH_POSITION[template % len(_WITH_POSITION)]]
    return fmt.format(a=article, obj=obj, where=phrases[phrase % len(phrases)])


def sample_captions(scenes: Scenes, generator: torch.Generator, p_uncond: float = 0.1,
                    p_omit: tuple[float, float, float, float] = (0.15, 0.15, 0.25, 0.25)) -> list[str]:
    """One caption per scene in a random phrasing; colour, shape, position and size are each left out
    with probability ``p_omit`` (in that order), and the whole caption is ``""`` with probability
    ``p_uncond`` (caption dropout for classifier-free guidance)."""
    n = len(scenes)
    omit = torch.rand(n, 4, generator=generator) < torch.tensor(p_omit)
    template = torch.randint(0, 12, (n,), generator=generator)  # 12: a multiple of 4 and of 3 phrasings
    phrase = torch.randint(0, 2, (n,), generator=generator)
    drop = torch.rand(n, generator=generator) < p_uncond
    out = []
    for i in range(n):
        if drop[i]:
            out.append("")
            continue
        values = [int(v[i]) for v in (scenes.colour, scenes.shape, scenes.position, scenes.size)]
        kept = [None if omit[i, k] else values[k] for k in range(4)]
        out.append(caption(*kept, template=int(template[i]), phrase=int(phrase[i])))
    return out

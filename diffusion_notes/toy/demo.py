"""Sample the shipped digits model with three samplers and let the independent judge score them.

``digits_demo(outdir)`` draws every digit with DDPM (1000 ancestral steps), DDIM (50 steps) and
PLMS (50 steps), all guided (classifier-free guidance, Ho & Salimans 2022) and all starting from
the *same* :math:`x_T`, so the grid it writes compares samplers and nothing else. Real test
digits and pure noise are scored alongside as the two ends of the scale.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..guidance import guided_eps_model
from ..sampling import sample
from . import judge
from .digits import NUM_CLASSES, load_split
from .model import NULL_LABEL
from .pretrained import load_pretrained

__all__ = ["SAMPLERS", "GUIDANCE_SCALE", "draw_digits", "score", "digits_demo"]

#: name -> keyword arguments of :func:`diffusion_notes.sampling.sample`.
SAMPLERS = {
    "DDPM-1000": {"sampler": "ddpm", "steps": 1000},
    "DDIM-50": {"sampler": "ddim", "steps": 50},
    "PLMS-50": {"sampler": "plms", "steps": 50},
}

#: The classifier-free guidance scale s of Ho & Salimans 2022 Eq. 6 (s = 1: the plain conditional model).
GUIDANCE_SCALE = 2.0


@torch.no_grad()
def draw_digits(model, schedule, labels: torch.Tensor, sampler: str, steps: int, guidance_scale: float = GUIDANCE_SCALE, seed: int = 0):
    """Images (N, 1, 8, 8) of the digits ``labels`` (N,), sampled with classifier-free guidance.

    ``x_T`` comes from ``seed`` alone, so two calls with the same seed and labels start from the
    same noise whatever the sampler; the same generator then supplies DDPM's per-step noise.
    The guided model evaluates the conditional and the unconditional (null-label) prediction
    in one batch of 2N, as CompVis does.
    """
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn(labels.shape[0], 1, 8, 8, generator=generator)
    eps_model = guided_eps_model(model, labels, torch.full_like(labels, NULL_LABEL), guidance_scale)
    return sample(eps_model, x_T, schedule, sampler=sampler, steps=steps, generator=generator)


def score(images, labels) -> dict:
    """The judge's two numbers for a set of images and the digits they are meant to show."""
    return {
        "mean_top_class_probability": judge.mean_top_class_probability(images),
        "agreement": judge.agreement(images, labels),
        "n": int(labels.shape[0]),
    }


def _save_grid(panels: dict[str, torch.Tensor], samples_per_digit: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(samples_per_digit, 4)  # a few rows per sampler are enough to see the difference
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 0.4 * rows + 1.3), dpi=120)
    for ax, (name, images) in zip(axes, panels.items()):
        # images are ordered digit-major: (digit, sample) -> a rows x 10 mosaic, one column per digit.
        grid = images.clamp(-1, 1).reshape(NUM_CLASSES, samples_per_digit, 8, 8)[:, :rows]
        # A 1-pixel mid-grey border (value 0) keeps neighbouring digits apart; their background is white.
        cell = 8 + 2
        grid = torch.nn.functional.pad(grid, (1, 1, 1, 1), value=0.0)
        mosaic = grid.permute(1, 2, 0, 3).reshape(rows * cell, NUM_CLASSES * cell)
        ax.imshow(mosaic.numpy(), cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(name)
        ax.set_xticks([cell * d + cell / 2 - 0.5 for d in range(NUM_CLASSES)], [str(d) for d in range(NUM_CLASSES)])
        ax.set_yticks([])
    fig.suptitle("digits DDPM, classifier-free guidance, same x_T for every sampler")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_table(table: dict[str, dict]) -> str:
    lines = [f"{'samples':<18} {'n':>5} {'top-class prob':>15} {'judge agrees':>13}"]
    for name, row in table.items():
        lines.append(f"{name:<18} {row['n']:>5} {row['mean_top_class_probability']:>15.3f} {row['agreement']:>13.3f}")
    return "\n".join(lines)


def digits_demo(outdir, samples_per_digit: int = 10, guidance_scale: float = GUIDANCE_SCALE, seed: int = 0) -> dict:
    """Sample every digit with each of :data:`SAMPLERS`, write ``digits_samplers.png`` into
    ``outdir``, print and return the judge's quality table.

    Returns ``{"table": {name: {"mean_top_class_probability", "agreement", "n"}}, "figure": path,
    "guidance_scale": s, "samples_per_digit": k}``; the table also has rows for the real test
    digits and for pure Gaussian noise.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    model, schedule = load_pretrained()
    labels = torch.arange(NUM_CLASSES).repeat_interleave(samples_per_digit)

    panels, table = {}, {}
    for name, settings in SAMPLERS.items():
        panels[name] = draw_digits(model, schedule, labels, guidance_scale=guidance_scale, seed=seed, **settings)
        table[name] = score(panels[name], labels)
    test_images, test_labels = load_split("test")
    table["real test digits"] = score(test_images, test_labels)
    noise = torch.randn(labels.shape[0], 1, 8, 8, generator=torch.Generator().manual_seed(seed + 1))
    table["pure noise"] = score(noise, labels)

    figure = outdir / "digits_samplers.png"
    _save_grid(panels, samples_per_digit, figure)
    print(f"guidance scale {guidance_scale}, {samples_per_digit} samples per digit\n{format_table(table)}\nwrote {figure}")
    return {"table": table, "figure": str(figure), "guidance_scale": guidance_scale, "samples_per_digit": samples_per_digit}

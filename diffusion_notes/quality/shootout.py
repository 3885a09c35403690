r"""Reading a sweep's ``cells.json`` the way the papers present samplers: distance against NFE, best per budget.

* :func:`best_per_budget`: for each budget B of model evaluations, the cell with the lowest FD-digits among
  all cells that use at most B (the question "which sampler at B evaluations?"), with the runner-up and
  whether the two are further apart than twice their combined bootstrap spread (otherwise: a tie);
* :func:`plot_fd_against_nfe`: one line per sampler, log x, error bars of one bootstrap standard deviation,
  and the floor (real held-out digits against the training digits).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

__all__ = ["load_cells", "select", "best_per_budget", "plot_fd_against_nfe", "markdown_best_table", "write_figure",
           "compare_cells"]


def load_cells(path) -> list[dict]:
    """The rows of a sweep's ``cells.json``."""
    return json.loads(Path(path).read_text())


def select(cells: list[dict], **where) -> list[dict]:
    """The cells whose fields equal every ``where`` value (``guidance=2.0, sigma_schedule="karras"``)."""
    return [c for c in cells if all(c[k] == v for k, v in where.items())]


def _label(cell: dict) -> str:
    return cell["sampler"] + (f" ({cell['sigma_schedule']})" if cell["sigma_schedule"] != "default" else "")


def best_per_budget(cells: list[dict], budgets) -> list[dict]:
    """For each budget: ``{"budget", "best", "nfe", "fd", "std", "precision", "recall", "runner_up",
    "runner_up_fd", "runner_up_std", "separated"}`` over the cells with ``nfe <= budget``."""
    rows = []
    for budget in budgets:
        within = sorted((c for c in cells if c["nfe"] <= budget and not math.isnan(c["fd_digits"])),
                        key=lambda c: c["fd_digits"])
        if not within:
            continue
        best = within[0]
        row = {"budget": budget, "best": _label(best), "nfe": best["nfe"], "fd": best["fd_digits"],
               "std": best["fd_digits_std"], "precision": best["precision"], "recall": best["recall"],
               "runner_up": None, "runner_up_fd": math.nan, "runner_up_std": math.nan, "separated": True}
        # the runner-up: the best cell of a *different* sampler (same sampler, fewer NFE, is not a rival)
        rivals = [c for c in within if _label(c) != row["best"]]
        if rivals:
            second = rivals[0]
            gap = second["fd_digits"] - best["fd_digits"]
            row.update(runner_up=_label(second), runner_up_fd=second["fd_digits"], runner_up_std=second["fd_digits_std"],
                       separated=gap > 2 * math.hypot(best["fd_digits_std"], second["fd_digits_std"]))
        rows.append(row)
    return rows


def markdown_best_table(rows: list[dict]) -> str:
    """:func:`best_per_budget` as a markdown table (FD-digits ± one bootstrap standard deviation)."""
    lines = ["| NFE budget | best (NFE used) | FD-digits | precision | recall | runner-up | FD-digits | apart by > 2 sd |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['budget']} | {r['best']} ({r['nfe']}) | {r['fd']:.2f} ± {r['std']:.2f} | {r['precision']:.2f} | "
                     f"{r['recall']:.2f} | {r['runner_up']} | {r['runner_up_fd']:.2f} ± {r['runner_up_std']:.2f} | "
                     f"{'yes' if r['separated'] else 'no (tie)'} |")
    return "\n".join(lines)


def plot_fd_against_nfe(ax, cells: list[dict], floor: float | None = None, title: str = ""):
    """FD-digits against NFE (log x), one line per sampler, error bars of one bootstrap standard deviation."""
    by_sampler: dict[str, list[dict]] = {}
    for c in sorted(cells, key=lambda c: c["nfe"]):
        by_sampler.setdefault(_label(c), []).append(c)
    import matplotlib.pyplot as plt

    from ..samplers import SAMPLERS

    markers = "osD^v<>pPX*h"
    for name, rows in by_sampler.items():
        i = list(SAMPLERS).index(rows[0]["sampler"])  # one colour and marker per sampler, in every panel
        ax.errorbar([r["nfe"] for r in rows], [r["fd_digits"] for r in rows], yerr=[r["fd_digits_std"] for r in rows],
                    label=name, marker=markers[i % len(markers)], color=plt.cm.tab20((2 * i) % 20 + (2 * i) // 20),
                    markersize=4, capsize=2, linewidth=1)
    if floor is not None:
        ax.axhline(floor, color="k", linestyle="--", linewidth=1, label="floor (real test digits)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter

    ticks = sorted({c["nfe"] for c in cells} & {5, 8, 10, 15, 20, 30, 50}) or sorted({c["nfe"] for c in cells})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("model evaluations (NFE)")
    ax.set_ylabel("FD-digits (lower is better)")
    ax.set_title(title)
    return ax


def write_figure(cells: list[dict], path, floor: float | None = None) -> None:
    """One panel per guidance scale and σ schedule present in ``cells`` (guided first), FD-digits against NFE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(c["guidance"], c["sigma_schedule"]) for c in cells}, key=lambda g: (-g[0], g[1] != "default", g[1]))
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4.6), sharey=True, squeeze=False)
    for ax, (guidance, schedule) in zip(axes[0], groups):
        title = f"{'no guidance (1.0)' if guidance == 1 else f'guidance {guidance}'}, {schedule} σ"
        plot_fd_against_nfe(ax, select(cells, guidance=guidance, sigma_schedule=schedule), floor, title)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    """``python -m diffusion_notes.quality.shootout CELLS_JSON FIGURE_PNG``: the figure, and the best-per-budget
    tables (guided, unguided) in markdown on stdout."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m diffusion_notes.quality.shootout", description=main.__doc__)
    parser.add_argument("cells", help="a sweep's cells.json")
    parser.add_argument("figure", help="where to write the PNG figure")
    args = parser.parse_args(argv)
    cells = load_cells(args.cells)
    write_figure(cells, args.figure, cells[0].get("floor"))
    budgets = sorted({c["nfe"] for c in cells} | {5, 8, 10, 15, 20, 30, 50})
    budgets = [b for b in (5, 8, 10, 15, 20, 30, 50) if b in budgets]
    for guidance in sorted({c["guidance"] for c in cells}, reverse=True):
        print(f"\nguidance {guidance}:\n")
        print(markdown_best_table(best_per_budget(select(cells, guidance=guidance), budgets)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def compare_cells(outdir, manifest, a: dict, b: dict, n_resamples: int = 200):
    """FD-digits(a) - FD-digits(b) with a *paired* bootstrap spread, from a sweep's images.

    ``a`` and ``b`` select one cell each (``{"sampler": "ddim", "nfe": 10, "guidance": 2.0}``; unnamed fields
    must leave one cell). The two cells must have the same seeds and image counts, so that image i of both
    started from the same :math:`x_T`: the paired bootstrap resamples the same images of both.
    """
    from .. import sweep
    from .bootstrap import paired_bootstrap
    from .features import digit_features, fd_digits

    jobs = list(dict.fromkeys(sweep.validate_manifest(manifest)))

    def features(where):
        chosen = [j for j in jobs if all(getattr(j, k) == v for k, v in where.items())]
        cells = {j.cell for j in chosen}
        if len(cells) != 1:
            raise ValueError(f"{where} selects {len(cells)} cells, not one")
        chosen.sort(key=lambda j: j.seed)
        images = np.concatenate([sweep.read_images(Path(outdir) / "images" / f"{sweep.job_hash(j)}.png", j) for j in chosen])
        return digit_features(sweep._as_judge_input(images)), [j.seed for j in chosen], chosen[0].size

    (fa, seeds_a, size), (fb, seeds_b, size_b) = features(a), features(b)
    if seeds_a != seeds_b or fa.shape != fb.shape or size != size_b:
        raise ValueError("the two cells do not share seeds, image counts and image size: their images are not paired")
    # the reference as the cells' model saw it (32: the miniature's upsampled digits), as in the sweep's own tables
    return paired_bootstrap(lambda f: fd_digits(features=f, size=size), fa, fb, n_resamples=n_resamples)

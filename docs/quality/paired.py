"""Paired comparisons of docs/quality.md: ``PYTHONPATH=. python docs/quality/paired.py digits|mini-sd [SWEEP_OUT]``.

SWEEP_OUT is the folder the shoot-out's sweep wrote (default /tmp/shootout/out for ``digits``, /tmp/grid/out for
``mini-sd``); its images are not committed, re-run the sweep to make them."""
import sys

from diffusion_notes.quality.shootout import compare_cells


def cell(sampler, nfe, guidance, sigma_schedule="default"):
    return dict(sampler=sampler, nfe=nfe, guidance=guidance, sigma_schedule=sigma_schedule)


G, U = 2.0, 1.0
SETS = {
    "digits": ("docs/quality/shootout.yaml", "/tmp/shootout/out", [
        (cell("dpmpp_2m", 10, G, "karras"), cell("ddim", 10, G)),
        (cell("dpmpp_2m", 10, G, "karras"), cell("euler", 10, G)),
        (cell("dpmpp_2m", 10, G, "karras"), cell("unipc", 10, G, "karras")),
        (cell("ddim", 5, G), cell("ddpm", 5, G)),
        (cell("dpmpp_2m_sde", 50, G), cell("euler", 50, G)),
        (cell("ddpm", 50, G), cell("ddim", 50, G)),
        (cell("euler_a", 50, G), cell("euler", 50, G)),
        (cell("dpmpp_2s_a", 49, G), cell("lms", 50, G)),
    ]),
    "mini-sd": ("docs/quality/shootout_mini_sd_grid.yaml", "/tmp/grid/out", [
        (cell("dpmpp_2m", 5, G), cell("ddim", 5, G)),
        (cell("unipc", 5, G), cell("dpmpp_2m", 5, G)),
        (cell("dpmpp_2m", 5, G, "karras"), cell("dpmpp_2m", 5, G)),
        (cell("dpmpp_2m", 5, G, "exponential"), cell("dpmpp_2m", 5, G)),
        (cell("euler", 5, G, "exponential"), cell("euler", 5, G)),
        (cell("ddim", 5, G), cell("euler", 5, G)),
        (cell("dpmpp_2m_sde", 8, G), cell("dpmpp_2m", 8, G)),
        (cell("dpmpp_2m_sde", 20, G), cell("ddim", 20, G)),
        (cell("heun", 9, G), cell("euler", 10, G)),
        (cell("euler_a", 50, G), cell("euler", 50, G)),
        (cell("ddpm", 50, G), cell("ddim", 50, G)),
        (cell("dpmpp_2m_sde", 20, U), cell("dpmpp_2m", 20, U)),
        (cell("ddpm", 50, U), cell("ddim", 50, U)),
        (cell("euler_a", 50, U), cell("euler", 50, U)),
        (cell("lms", 5, U), cell("ddim", 5, U)),
        (cell("euler", 5, U), cell("euler", 50, U)),
    ]),
}


def name(w):
    guidance = "" if w["guidance"] == G else f", guidance {w['guidance']:g}"
    schedule = {"default": "", "karras": " Karras", "exponential": " exponential"}[w["sigma_schedule"]]
    return f"{w['sampler']}{schedule} @{w['nfe']}{guidance}"


if __name__ == "__main__":
    manifest, out, pairs = SETS[sys.argv[1] if len(sys.argv) > 1 else "digits"]
    out = sys.argv[2] if len(sys.argv) > 2 else out
    print("| A | B | FD-digits(A) - FD-digits(B) | paired sd | apart by > 2 sd |\n|---|---|---|---|---|")
    for a, b in pairs:
        r = compare_cells(out, manifest, a, b)
        print(f"| {name(a)} | {name(b)} | {r.value:+.2f} | {r.std:.2f} | {'yes' if abs(r.value) > 2 * r.std else 'no'} |")

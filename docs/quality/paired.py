"""Paired comparisons of docs/quality.md: ``PYTHONPATH=. python docs/quality/paired.py [SWEEP_OUT]`` (default
/tmp/shootout/out, the folder the shoot-out's sweep wrote; its images are not committed, re-run the sweep to make them)."""
import sys

from diffusion_notes.quality.shootout import compare_cells

M, OUT = "docs/quality/shootout.yaml", sys.argv[1] if len(sys.argv) > 1 else "/tmp/shootout/out"
G = dict(guidance=2.0)
pairs = [
    (dict(sampler="dpmpp_2m", nfe=10, sigma_schedule="karras", **G), dict(sampler="ddim", nfe=10, **G)),
    (dict(sampler="dpmpp_2m", nfe=10, sigma_schedule="karras", **G), dict(sampler="euler", nfe=10, sigma_schedule="default", **G)),
    (dict(sampler="dpmpp_2m", nfe=10, sigma_schedule="karras", **G), dict(sampler="unipc", nfe=10, sigma_schedule="karras", **G)),
    (dict(sampler="ddim", nfe=5, **G), dict(sampler="ddpm", nfe=5, **G)),
    (dict(sampler="dpmpp_2m_sde", nfe=50, sigma_schedule="default", **G), dict(sampler="euler", nfe=50, sigma_schedule="default", **G)),
    (dict(sampler="ddpm", nfe=50, **G), dict(sampler="ddim", nfe=50, **G)),
    (dict(sampler="euler_a", nfe=50, sigma_schedule="default", **G), dict(sampler="euler", nfe=50, sigma_schedule="default", **G)),
    (dict(sampler="dpmpp_2s_a", nfe=49, sigma_schedule="default", **G), dict(sampler="lms", nfe=50, sigma_schedule="default", **G)),
]
def name(w):
    return f"{w['sampler']}{' Karras' if w.get('sigma_schedule') == 'karras' else ''} @{w['nfe']}"
print("| A | B | FD-digits(A) - FD-digits(B) | paired sd | apart by > 2 sd |\n|---|---|---|---|---|")
for a, b in pairs:
    r = compare_cells(OUT, M, a, b)
    print(f"| {name(a)} | {name(b)} | {r.value:+.2f} | {r.std:.2f} | {'yes' if abs(r.value) > 2 * r.std else 'no'} |")

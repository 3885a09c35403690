"""What every benchmark shares: diffusers' UNet and ours holding identical tensors, the alternating
timer, the table printer, and the thread settings. diffusers' models with random weights are built in
``random_models`` (shared with the tests).

diffusers is imported here, never by ``diffusion_notes``: it is the reference we measure against.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .random_models import sd15_unet


def configure_threads(threads: int | None = None) -> int:
    """Use ``threads`` torch threads (default: every core). Call before the first torch op.

    On a busy machine OpenMP's spin-waiting makes 2 threads slower than 1 (shared/NOTES.md), so the
    benchmarks set ``OMP_WAIT_POLICY=PASSIVE`` in the environment they document; this only reads it.
    """
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def machine() -> str:
    """One line: CPU, cores, torch version, thread settings."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")


# --------------------------------------------------------------------------------------------
# models with identical weights
# --------------------------------------------------------------------------------------------


def timed_child(command: list[str]) -> tuple[float, float, list[str]]:
    """Run ``command`` as a fresh process from the repository root: (wall seconds from start to exit, peak RSS in
    GiB (the kernel's ``ru_maxrss`` from ``os.wait4``, what ``/usr/bin/time -v`` prints), its stdout lines)."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        lines = out.read().strip().splitlines()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"the child process failed (exit {code}); run `{' '.join(command)}`")
    return wall, usage.ru_maxrss / 2**20, lines  # ru_maxrss is in KiB on Linux


def timed_child_json(command: list[str]) -> tuple[float, float, dict]:
    """:func:`timed_child` for a child that reports as JSON on its last line: (wall, peak RSS GiB, that JSON)."""
    wall, rss, lines = timed_child(command)
    if not lines:
        raise RuntimeError(f"the child printed no result; run `{' '.join(command)}`")
    return wall, rss, json.loads(lines[-1])


def requested_dtypes(precisions: list[str]) -> list[torch.dtype]:
    """The dtypes named by ``--precisions`` (``fp32``, ``bf16``, ``fp16``, or ``default``: this CPU's default dtype,
    ``diffusion_notes.precision``), in order, each once."""
    from diffusion_notes.precision import default_dtype, resolve_dtype

    dtypes = []
    for name in precisions:
        dtype = default_dtype("cpu") if name == "default" else resolve_dtype(name, "cpu")
        if dtype not in dtypes:
            dtypes.append(dtype)
    return dtypes


def unet_pair(size: str = "full", seed: int = 0, prepack: bool = True):
    """``(ours, theirs, context_dim)``: diffusers' UNet with random weights and ours holding the same tensors.

    Ours receives diffusers' tensors renamed (``checkpoints.diffusers_layout``) with
    ``load_state_dict(assign=True)``: the two models share their weight storage, so a full-size
    pair costs 3.4 GB, not 6.9 GB, and both read exactly the same numbers. ``prepack`` (default, as
    the loaders do for the CPU) then gives ours oneDNN-prepacked convolutions (``models.prepacked``),
    which hold their own reordered copy of the convolution weights.
    """
    torch.manual_seed(seed)
    theirs = sd15_unet(size == "full", tiny_context_dim=32).eval().requires_grad_(False)
    ours = ours_holding(theirs, prepack)
    return ours, theirs, ours.config.context_dim


def ours_holding(theirs, prepack: bool = True):
    """Our ``UNetModel`` holding the tensors of diffusers' UNet ``theirs`` (renamed, shared; see :func:`unet_pair`)."""
    from diffusion_notes.checkpoints import diffusers_layout as layout
    from diffusion_notes.models.prepacked import prepack_convolutions
    from diffusion_notes.models.unet import UNetModel

    config = layout.unet_config_from_diffusers(dict(theirs.config))
    with torch.device("meta"):
        ours = UNetModel(config)
    ours.load_state_dict(layout.unet_from_diffusers(theirs.state_dict(), config), strict=True, assign=True)
    ours = ours.eval().requires_grad_(False)
    return prepack_convolutions(ours) if prepack else ours


def unet_inputs(batch: int, side: int, context_dim: int, seed: int = 1):
    """Latents ``(batch, 4, side, side)``, timesteps and prompt features, float32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, side, side, generator=g)
    t = torch.full((batch,), 981, dtype=torch.long)
    context = torch.randn(batch, 77, context_dim, generator=g)
    return x, t, context


def run_ours(unet, x, t, context):
    return unet(x.to(unet.time_embed[0].weight.dtype), t, context).float()


def run_theirs(unet, x, t, context):
    dtype = unet.conv_out.weight.dtype
    return unet(x.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample.float()


# --------------------------------------------------------------------------------------------
# timing and tables
# --------------------------------------------------------------------------------------------


@dataclass
class Timings:
    """Seconds of each alternated run, by contestant."""

    runs: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.runs.setdefault(name, []).append(seconds)

    def median(self, name: str) -> float:
        return statistics.median(self.runs[name])

    def spread(self, name: str) -> str:
        values = self.runs[name]
        return f"{min(values):.3g}-{max(values):.3g}"


def alternate(contestants: dict, repeats: int, warmup: int = 1) -> Timings:
    """Run every contestant (``name -> zero-argument callable``) in turn, ``repeats`` rounds, after
    ``warmup`` untimed rounds: A B A B ..., so both see the same load on a shared machine."""
    timings = Timings()
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            for name, run in contestants.items():
                start = time.perf_counter()
                run()
                elapsed = time.perf_counter() - start
                if round_ >= warmup:
                    timings.add(name, elapsed)
    return timings


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (what docs/benchmarks.md keeps)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)

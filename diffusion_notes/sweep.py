r"""``python -m diffusion_notes sweep``: many generation jobs from a manifest, resumable, sharded with torchrun.

A **manifest** lists jobs, one JSON object per line (``.jsonl``), or a grid (``.json`` / ``.yaml``, an
object whose list values are expanded to every combination, lists of lists left alone). A job's fields:

=================  ========================================================================================
``model``          ``"digits"`` (the shipped 8x8 class-conditional DDPM) or ``"mini-sd"`` (the miniature SD)
``sampler``        a registered sampler (:data:`~diffusion_notes.samplers.SAMPLERS`)
``steps``/``nfe``  the number of steps, or a budget of model evaluations (the most steps within it,
                   :func:`~diffusion_notes.quality.nfe.steps_for_nfe`); exactly one of the two
``sigma_schedule`` ``"default"`` (the default), ``"karras"``, ``"exponential"``
``guidance``       the classifier-free guidance scale (default 2.0 for digits, 7.5 for mini-sd; 1 = none)
``seed``           the seed of the job's noise (default 0): x_T and any sampler noise come from it alone
``label``          digits: the digit 0-9 of every image, or ``"all"`` (default: image i shows digit i mod 10)
``prompt``         mini-sd: the caption of every image, or ``"digits"`` (default: image i asks for digit i mod 10)
``num_images``     images in the job (default 10), drawn in one batch
``size``           mini-sd only: height = width in pixels, a multiple of 8 (default 32)
=================  ========================================================================================

Every line is validated before anything runs; each error names its line and field. Each job writes
``images/<hash>.png`` (its images side by side, with the AUTOMATIC1111 ``parameters`` text; the hash is
of the job's resolved settings) and then ``jobs/<hash>.json`` (its record); both via a temporary file
and ``os.replace``, so a crash never leaves half a file. A job whose record exists is finished: a
re-run skips it, so a sweep resumes after Ctrl-C and never duplicates work.

**Sharding** rides on ``torch.distributed``: under ``torchrun`` (``RANK``, ``WORLD_SIZE``), job ``i`` of the
manifest's distinct jobs belongs to rank ``i mod WORLD_SIZE`` (gloo on the CPU, nccl with ``--device cuda``; several
machines need a shared output folder and torchrun's rendezvous). Each rank writes only its own jobs'
files and ``throughput-rank<r>.json``; after a barrier rank 0 **collects**: ``results.csv`` /
``results.json`` (one row per job, in manifest order) and ``cells.csv`` / ``cells.json`` (jobs that
differ only in ``seed`` pooled: FD-digits with its bootstrap spread, precision, recall and judge agreement,
:mod:`diffusion_notes.quality`). ``sweep --collect`` does only that. Timings stay out of those tables,
so the same manifest gives the same files and tables on any number of processes.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .errors import SettingsError

__all__ = ["Job", "ManifestError", "MODELS", "read_manifest", "validate_job", "job_hash", "run_job", "run_sweep",
           "collect", "main"]

#: The models a manifest may name: name -> (image size, default guidance scale).
MODELS = {"digits": (8, 2.0), "mini-sd": (32, 7.5)}

_FIELDS = ("model", "sampler", "steps", "nfe", "sigma_schedule", "guidance", "seed", "label", "prompt", "num_images", "size")


class ManifestError(ValueError):
    """Bad manifest lines: ``errors`` holds one message per problem, each naming its line and field."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Job:
    """One job, every field resolved (no defaults left to apply), as hashed and recorded."""

    model: str
    sampler: str
    sigma_schedule: str
    steps: int
    nfe: int
    guidance: float
    seed: int
    condition: str  # digits: "all" or "0".."9"; mini-sd: "digits" or the prompt
    num_images: int
    size: int

    @property
    def cell(self) -> tuple:
        """The settings a cell of the results shares: everything but the seed."""
        return tuple(v for k, v in asdict(self).items() if k != "seed")

    def labels(self) -> list[int]:
        """The digit each image is meant to show (-1 where a free prompt names none)."""
        if self.condition in ("all", "digits"):
            return [i % 10 for i in range(self.num_images)]
        if self.model == "digits":
            return [int(self.condition)] * self.num_images
        return [-1] * self.num_images


def job_hash(job: Job) -> str:
    """The first 16 hex digits of the SHA-256 of the job's settings as canonical JSON: its file name."""
    return hashlib.sha256(json.dumps(asdict(job), sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# the manifest


def _expand_grid(grid: dict) -> list[dict]:
    keys = list(grid)
    values = [v if isinstance(v, list) else [v] for v in grid.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def read_manifest(path) -> list[tuple[int, dict]]:
    """``[(line number or grid index, raw job dict), ...]``; a file that cannot be read is a ManifestError."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError([f"{path}: no such manifest file; give a .jsonl file of jobs or a .json/.yaml grid"])
    text = path.read_text()
    if path.suffix in (".yaml", ".yml", ".json"):
        try:
            if path.suffix == ".json":
                grid = json.loads(text)
            else:
                import yaml

                grid = yaml.safe_load(text)
        except Exception as err:  # noqa: BLE001 - a parse error, reported in one line
            raise ManifestError([f"{path}: not a valid {path.suffix[1:].upper()} grid ({err})"]) from None
        grids = grid if isinstance(grid, list) else [grid]
        if not all(isinstance(g, dict) for g in grids):
            raise ManifestError([f"{path}: a grid must be an object (or a list of objects) of job fields"])
        return list(enumerate((job for g in grids for job in _expand_grid(g)), 1))
    jobs = []
    errors = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            job = json.loads(line)
        except json.JSONDecodeError as err:
            errors.append(f"{path} line {number}: not valid JSON ({err.msg} at column {err.colno})")
            continue
        if not isinstance(job, dict):
            errors.append(f"{path} line {number}: a job must be a JSON object, got {type(job).__name__}")
            continue
        jobs.append((number, job))
    if errors:
        raise ManifestError(errors)
    if not jobs:
        raise ManifestError([f"{path}: the manifest lists no jobs"])
    return jobs


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_job(raw: dict) -> tuple[Job | None, list[tuple[str, str]]]:
    """``(job, [])`` or ``(None, [(field, problem), ...])``: every problem of one manifest entry."""
    from .samplers import SAMPLERS, SIGMA_SCHEDULES

    errors = []
    for name in raw:
        if name not in _FIELDS:
            errors.append((name, f"unknown field; the fields are {', '.join(_FIELDS)}"))
    model = raw.get("model")
    if model is None:
        errors.append(("model", f"missing; name one of {', '.join(MODELS)}"))
    elif model not in MODELS:
        errors.append(("model", f"unknown model {model!r}; choose one of {', '.join(MODELS)}"))
    sampler = raw.get("sampler")
    if sampler not in SAMPLERS:
        errors.append(("sampler", f"{'missing' if sampler is None else f'unknown sampler {sampler!r}'}; "
                                  f"choose one of {', '.join(SAMPLERS)}"))
    schedule = raw.get("sigma_schedule", "default")
    if schedule not in SIGMA_SCHEDULES:
        errors.append(("sigma_schedule", f"unknown σ schedule {schedule!r}; choose one of {', '.join(SIGMA_SCHEDULES)}"))
    if ("steps" in raw) == ("nfe" in raw):
        errors.append(("steps", "give exactly one of steps and nfe"))
    for name in ("steps", "nfe"):
        if name in raw and (not _is_int(raw[name]) or not 1 <= raw[name] <= 1000):
            errors.append((name, f"must be an integer from 1 to 1000, got {raw[name]!r}"))
    size_default, guidance_default = MODELS.get(model, (8, 2.0))
    guidance = raw.get("guidance", guidance_default)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or guidance < 0:
        errors.append(("guidance", f"must be a finite number >= 0 (1 = no guidance), got {guidance!r}"))
    seed = raw.get("seed", 0)
    if not _is_int(seed) or not 0 <= seed < 2**32:
        errors.append(("seed", f"must be an integer from 0 to 2**32 - 1, got {seed!r}"))
    num_images = raw.get("num_images", 10)
    if not _is_int(num_images) or not 1 <= num_images <= 10_000:
        errors.append(("num_images", f"must be an integer from 1 to 10000, got {num_images!r}"))
    size = raw.get("size", size_default)
    if model == "digits" and size != 8:
        errors.append(("size", f"the digits model draws 8x8 images only, got {size!r}"))
    elif not _is_int(size) or size < 8 or size % 8:
        errors.append(("size", f"must be a multiple of 8 pixels, got {size!r}"))
    if model == "digits":
        if "prompt" in raw:
            errors.append(("prompt", "the digits model takes a label (0-9 or \"all\"), not a prompt"))
        condition = raw.get("label", "all")
        if not (condition == "all" or (_is_int(condition) and 0 <= condition <= 9)):
            errors.append(("label", f"must be a digit 0-9 or \"all\", got {condition!r}"))
    else:
        if "label" in raw:
            errors.append(("label", "mini-sd takes a prompt (or \"digits\"), not a label"))
        condition = raw.get("prompt", "digits")
        if not isinstance(condition, str):
            errors.append(("prompt", f"must be a string, got {condition!r}"))
    if errors:
        return None, errors
    try:
        steps, nfe = _steps_and_nfe(model, sampler, schedule, raw.get("steps"), raw.get("nfe"))
    except SettingsError as err:
        return None, [("nfe" if "nfe" in raw else "steps", str(err))]
    return Job(model, sampler, schedule, steps, nfe, float(guidance), seed, str(condition), num_images, size), []


@lru_cache(maxsize=None)
def _steps_and_nfe(model: str, sampler: str, sigma_schedule: str, steps: int | None, nfe: int | None) -> tuple[int, int]:
    """``(steps, model evaluations)`` of a job given its steps or its NFE budget (counted once per combination)."""
    from .quality.nfe import count_model_evaluations, steps_for_nfe

    schedule = _noise_schedule(model)
    steps = steps if steps is not None else steps_for_nfe(sampler, nfe, sigma_schedule, schedule)
    return steps, count_model_evaluations(sampler, steps, sigma_schedule, schedule)


def validate_manifest(path) -> list[Job]:
    """Every job of the manifest, resolved; a ManifestError listing *every* bad line and field otherwise."""
    jobs, errors = [], []
    for number, raw in read_manifest(path):
        job, problems = validate_job(raw)
        where = "line" if Path(path).suffix == ".jsonl" else "grid entry"
        errors += [f"{path} {where} {number}, field {field!r}: {problem}" for field, problem in problems]
        if job is not None:
            jobs.append(job)
    if errors:
        raise ManifestError(errors)
    return jobs


# --------------------------------------------------------------------------------------------------
# running one job


#: k of the k-NN manifolds of precision and recall (Kynkäänniemi et al. 2019's default).
_K = 3


@lru_cache(maxsize=None)
def _noise_schedule(model: str):
    from .schedules import NoiseSchedule

    if model == "digits":
        from .toy.pretrained import pretrained_path, read_metadata

        meta = read_metadata(pretrained_path())
        return NoiseSchedule.from_name(meta["schedule"], int(meta["num_timesteps"]))
    return NoiseSchedule.stable_diffusion()


@lru_cache(maxsize=None)
def _load(model: str, device: str):
    """The model of a manifest's ``model`` field, loaded once per process and device."""
    if model == "digits":
        from .toy.pretrained import load_pretrained

        net, schedule = load_pretrained()
        return net.to(device), schedule
    from .mini_sd.pretrained import load_mini_sd

    return load_mini_sd(device=device), None


@torch.no_grad()
def generate(job: Job, device: str = "cpu") -> np.ndarray:
    """The job's images as uint8 (N, H, W, C): C = 1 for digits, 3 for mini-sd."""
    if job.model == "digits":
        from .guidance import guided_eps_model
        from .sampling import sample
        from .toy.model import NULL_LABEL

        net, schedule = _load("digits", device)
        labels = torch.tensor(job.labels(), device=device)
        generator = torch.Generator().manual_seed(job.seed)
        x_T = torch.randn(job.num_images, 1, 8, 8, generator=generator).to(device)
        eps_model = guided_eps_model(net, labels, torch.full_like(labels, NULL_LABEL), job.guidance)
        x = sample(eps_model, x_T, schedule, sampler=job.sampler, steps=job.steps, sigma_schedule=job.sigma_schedule,
                   generator=generator)
        unit = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    else:
        from .mini_sd.data import caption

        sd, _ = _load("mini-sd", device)
        prompts = [caption(d) for d in job.labels()] if job.condition == "digits" else [job.condition] * job.num_images
        result = sd.txt2img(prompts, steps=job.steps, sampler=job.sampler, sigma_schedule=job.sigma_schedule,
                            guidance_scale=job.guidance, seed=job.seed, height=job.size, width=job.size,
                            output="array", progress=False)
        unit = result.arrays
    return np.round(np.clip(unit, 0, 1) * 255).astype(np.uint8)


def _infotext(job: Job) -> str:
    from .infotext import format_parameters
    from .sampling import SamplerSettings

    prompt = {"all": "digits 0-9", "digits": "the ten digit captions"}.get(job.condition, job.condition)
    if job.model == "digits" and job.condition != "all":
        prompt = f"digit {job.condition}"
    label = SamplerSettings(job.sampler, job.steps, sigma_schedule=job.sigma_schedule).label
    return format_parameters(prompt, steps=job.steps, sampler=label, cfg_scale=job.guidance, seed=job.seed,
                             size=f"{job.size}x{job.size}", model=job.model)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _png_bytes(images: np.ndarray, text: str) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    strip = np.concatenate(list(images), axis=1)  # (H, N*W, C): the images side by side, in order
    image = Image.fromarray(strip[..., 0] if strip.shape[-1] == 1 else strip)
    info = PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_images(path, job: Job) -> np.ndarray:
    """The job's images back from its PNG: uint8 (N, H, W, C)."""
    from PIL import Image

    strip = np.asarray(Image.open(path))
    strip = strip[..., None] if strip.ndim == 2 else strip
    return np.stack(np.split(strip, job.num_images, axis=1))


def _as_judge_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> (N, C, H, W) in [-1, 1], what the judge and the FD-digits features read."""
    return torch.from_numpy(images.astype(np.float32) / 255.0 * 2 - 1).permute(0, 3, 1, 2)


def run_job(job: Job, outdir, device: str = "cpu") -> dict:
    """Generate, write the PNG then the record (each atomically); returns the record."""
    from .mini_sd import judge

    outdir, name = Path(outdir), job_hash(job)
    for sub in ("images", "jobs"):
        (outdir / sub).mkdir(parents=True, exist_ok=True)
    images = generate(job, device)
    _atomic_write(outdir / "images" / f"{name}.png", _png_bytes(images, _infotext(job)))
    labels = np.array(job.labels())
    probs = judge.predict_proba(_as_judge_input(images))
    known = labels >= 0
    record = {"hash": name, **asdict(job), "image": f"images/{name}.png",
              "judge_agreement": float((probs.argmax(1) == labels)[known].mean()) if known.any() else None,
              "judge_top_class_probability": float(probs.max(1).mean())}
    _atomic_write(outdir / "jobs" / f"{name}.json", json.dumps(record, sort_keys=True, indent=1).encode())
    return record


# --------------------------------------------------------------------------------------------------
# the sweep and the gathering


def _distributed(device: str):
    """``(rank, world_size)`` from torchrun's environment; joins the process group when there are several."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1:
        import datetime

        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                    timeout=datetime.timedelta(hours=24))
    return rank, world_size


def run_sweep(jobs: list[Job], outdir, *, rank: int = 0, world_size: int = 1, device: str = "cpu",
              progress: bool = True) -> dict:
    """Run this rank's share of ``jobs`` (job i of the distinct jobs when i mod world_size == rank), skipping finished ones;
    writes and returns this rank's throughput ``{"rank", "jobs", "skipped", "images", "seconds"}``."""
    outdir = Path(outdir)
    (outdir / "jobs").mkdir(parents=True, exist_ok=True)
    unique = list(dict.fromkeys(jobs))  # a job listed twice is one job: run once, by one rank
    mine = [job for i, job in enumerate(unique) if i % world_size == rank]
    todo = [job for job in mine if not (outdir / "jobs" / f"{job_hash(job)}.json").exists()]
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"rank {rank}", position=rank, file=sys.stderr, leave=True)
    images = 0
    for job in todo:
        run_job(job, outdir, device)
        images += job.num_images
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    stats = {"rank": rank, "jobs": len(todo), "skipped": len(mine) - len(todo), "images": images,
             "seconds": time.perf_counter() - start}
    _atomic_write(outdir / f"throughput-rank{rank}.json", json.dumps(stats).encode())
    return stats


def _write_table(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, buffer.getvalue().encode())
    _atomic_write(path.with_suffix(".json"), json.dumps(rows, indent=1).encode())


def _cell_metrics(jobs: list[Job], outdir: Path, n_resamples: int) -> dict:
    from .mini_sd import judge
    from .quality import bootstrap, precision_recall
    from .quality.features import digit_features, fd_digits, floor

    images = np.concatenate([read_images(outdir / "images" / f"{job_hash(j)}.png", j) for j in jobs])
    labels = np.concatenate([j.labels() for j in jobs])
    x = _as_judge_input(images)
    features = digit_features(x)
    known = labels >= 0
    agreement = float((judge.predicted_digits(x) == labels)[known].mean()) if known.any() else float("nan")
    size = jobs[0].size
    row = {"n": len(features), "floor": floor(size), "fd_digits": math.nan, "fd_digits_std": math.nan, "precision": math.nan,
           "recall": math.nan, "judge_agreement": agreement}
    if len(features) > _K:  # fewer images have no k-th neighbour (and no covariance worth the name)
        fd = bootstrap(lambda f: fd_digits(features=f, size=size), features, n_resamples=n_resamples, seed=0)
        precision, recall = precision_recall(_train_features(size), features, k=_K)
        row.update(fd_digits=fd.value, fd_digits_std=fd.std, precision=precision, recall=recall)
    return row


@lru_cache(maxsize=4)
def _train_features(size: int) -> np.ndarray:
    """FD-digits features of the training digits at image ``size``: the real set of precision and recall."""
    from .quality.features import digit_features, real_images

    return digit_features(real_images("train", size))


def collect(jobs: list[Job], outdir, n_resamples: int = 50) -> dict:
    """Gather every job's record into ``results.csv/json`` (manifest order) and pool the cells into
    ``cells.csv/json`` with their metrics. Missing records are an error naming how many."""
    from .quality.features import floor

    outdir = Path(outdir)
    unique = list(dict.fromkeys(jobs))
    missing = [j for j in unique if not (outdir / "jobs" / f"{job_hash(j)}.json").exists()]
    if missing:
        raise ManifestError([f"{len(missing)} of {len(unique)} jobs have no results in {outdir} yet "
                             f"(first: {job_hash(missing[0])}); run the sweep to finish them, then collect"])
    records = [json.loads((outdir / "jobs" / f"{job_hash(j)}.json").read_text()) for j in unique]
    _write_table(outdir / "results.csv", records)
    cells: dict[tuple, list[Job]] = {}
    for job in unique:
        cells.setdefault(job.cell, []).append(job)
    rows = []
    for members in cells.values():
        first = asdict(members[0])
        first.pop("seed")
        rows.append({**first, "seeds": len(members), **_cell_metrics(members, outdir, n_resamples)})
    _write_table(outdir / "cells.csv", rows)
    return {"results": records, "cells": rows, "floor": {size: floor(size) for size in sorted({j.size for j in unique})}}


def _throughput_summary(stats: list[dict]) -> str:
    lines = []
    for s in stats:
        rate = s["images"] / s["seconds"] if s["seconds"] > 0 else float("nan")
        lines.append(f"rank {s['rank']}: {s['jobs']} jobs ({s['skipped']} already done), {s['images']} images "
                     f"in {s['seconds']:.1f} s, {rate:.1f} images/s")
    wall = max(s["seconds"] for s in stats)
    total = sum(s["images"] for s in stats)
    lines.append(f"total: {total} images in {wall:.1f} s on {len(stats)} process(es), "
                 f"{total / wall if wall > 0 else float('nan'):.1f} images/s")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m diffusion_notes sweep", description=__doc__.split("\n")[0],
                                epilog="Several processes: python -m torch.distributed.run --nproc_per_node 2 "
                                       "-m diffusion_notes sweep MANIFEST --out DIR")
    p.add_argument("manifest", help="jobs: a .jsonl file (one JSON object per line) or a .json/.yaml grid")
    p.add_argument("--out", required=True, help="output folder (created; a re-run resumes in it)")
    p.add_argument("--collect", action="store_true", help="only gather finished jobs into the tables and metrics")
    p.add_argument("--no-collect", action="store_true", help="run the jobs, leave the gathering for later")
    p.add_argument("--device", default="cpu", help="torch device (default cpu); with cuda, processes use nccl")
    p.add_argument("--bootstrap", type=int, default=50, help="bootstrap resamples for FD-digits' spread (default 50)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        jobs = validate_manifest(args.manifest)
    except ManifestError as err:
        for line in err.errors:
            print(f"error: {line}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file; give a folder", file=sys.stderr)
        return 2
    if args.collect:
        rank, world_size = 0, 1
    else:
        rank, world_size = _distributed(args.device)
        stats = run_sweep(jobs, out, rank=rank, world_size=world_size, device=args.device, progress=not args.quiet)
        if world_size > 1:
            import torch.distributed as dist

            gathered = [None] * world_size
            dist.all_gather_object(gathered, stats)  # also the barrier: every rank has finished its jobs
            dist.destroy_process_group()
        else:
            gathered = [stats]
        if rank == 0:
            print(_throughput_summary(gathered))
    if rank != 0 or args.no_collect:
        return 0
    try:
        summary = collect(jobs, out, n_resamples=args.bootstrap)
    except ManifestError as err:
        print(f"error: {err.errors[0]}", file=sys.stderr)
        return 2
    floors = ", ".join(f"{value:.3f} at {size}x{size}" for size, value in summary["floor"].items())
    print(f"wrote {out / 'results.csv'} ({len(summary['results'])} jobs) and {out / 'cells.csv'} "
          f"({len(summary['cells'])} cells); FD-digits floor (real test vs train digits): {floors}")
    return 0

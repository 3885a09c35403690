"""``python -m diffusion_notes sweep``: validation of every line first, resuming without duplicates, and
two torchrun processes giving the same files and tables as one, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_notes import sweep
from diffusion_notes.infotext import parse_parameters
from diffusion_notes.quality.nfe import count_model_evaluations

ROOT = Path(__file__).resolve().parents[2]

JOBS = [
    {"model": "digits", "sampler": "ddim", "steps": 4, "seed": 0, "num_images": 12},
    {"model": "digits", "sampler": "ddim", "steps": 4, "seed": 1, "num_images": 12},
    {"model": "digits", "sampler": "dpmpp_2m", "sigma_schedule": "karras", "nfe": 4, "seed": 0, "num_images": 12},
    {"model": "digits", "sampler": "heun", "nfe": 5, "seed": 0, "num_images": 12, "label": 7},
    {"model": "digits", "sampler": "euler_a", "steps": 3, "seed": 5, "num_images": 12, "guidance": 1.0},
]


def write_manifest(path: Path, jobs=JOBS) -> Path:
    path.write_text("\n".join(json.dumps(j) for j in jobs) + "\n")
    return path


def tree(folder: Path) -> dict[str, bytes]:
    """Every file the sweep's result is made of (not the per-rank timings), path -> bytes."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("throughput-"):
            files[str(path.relative_to(folder))] = path.read_bytes()
    return files


def run_cli(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kwargs)


def test_every_bad_line_is_reported_with_its_field(tmp_path, capsys):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"model": "digits", "sampler": "ddim", "steps": 5}),
        json.dumps({"model": "digits", "sampler": "dpm_fast", "steps": 5}),
        json.dumps({"sampler": "ddim", "steps": 5}),
        '{"model": "digits", "sampler": "ddim", "steps": 5, "guidance": NaN}',
        json.dumps({"model": "sd-xl", "sampler": "ddim", "steps": 5, "colour": "red"}),
        "not json",
    ]) + "\n")
    assert sweep.main([str(manifest), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{manifest} line 6: not valid JSON" in err
    assert not (tmp_path / "out").exists()  # nothing ran
    manifest.write_text("\n".join(manifest.read_text().splitlines()[:5]) + "\n")
    assert sweep.main([str(manifest), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert any("line 2, field 'sampler': unknown sampler 'dpm_fast'" in x for x in lines)
    assert any("line 3, field 'model': missing" in x for x in lines)
    assert any("line 4, field 'guidance'" in x and "nan" in x for x in lines)
    assert any("line 5, field 'model': unknown model 'sd-xl'" in x for x in lines)
    assert any("line 5, field 'colour': unknown field" in x for x in lines)
    assert not any("line 1," in x for x in lines) and len(lines) == 5
    assert not (tmp_path / "out").exists()


def test_grid_is_expanded_and_nfe_resolved(tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"model": "digits", "sampler": ["heun", "dpmpp_2s_a", "euler"], "nfe": [5, 10], "seed": [0, 1]}))
    jobs = sweep.validate_manifest(grid)
    assert len(jobs) == 12
    for job in jobs:
        assert job.nfe == count_model_evaluations(job.sampler, job.steps, schedule=sweep._noise_schedule("digits"))
    # Karras Alg. 1 (Heun) and DPM-Solver++(2S) call the model twice per step, once on the last: 2S - 1
    assert {(j.sampler, j.steps, j.nfe) for j in jobs} == {
        ("heun", 3, 5), ("heun", 5, 9), ("dpmpp_2s_a", 3, 5), ("dpmpp_2s_a", 5, 9), ("euler", 5, 5), ("euler", 10, 10)}


def test_png_holds_the_images_and_the_a1111_parameters(tmp_path):
    job = sweep.validate_manifest(write_manifest(tmp_path / "m.jsonl", JOBS[2:3]))[0]
    record = sweep.run_job(job, tmp_path)
    png = tmp_path / record["image"]
    params = parse_parameters(Image.open(png).text["parameters"])
    assert params["Sampler"] == "DPM++ 2M Karras" and params["Steps"] == str(job.steps)
    assert params["Seed"] == "0" and params["CFG scale"] == "2.0" and params["Model"] == "digits"
    assert np.array_equal(sweep.read_images(png, job), sweep.generate(job))
    assert png.name == f"{sweep.job_hash(job)}.png" and not list(tmp_path.rglob("*.tmp"))


def test_resume_after_interruption_skips_finished_jobs_and_never_duplicates(tmp_path, monkeypatch):
    jobs = sweep.validate_manifest(write_manifest(tmp_path / "m.jsonl", JOBS + [JOBS[0]]))  # one job listed twice
    straight = tmp_path / "straight"
    first = sweep.run_sweep(jobs, straight, progress=False)
    assert first["jobs"] == 5 and first["images"] == 60  # the duplicate ran once
    sweep.collect(jobs, straight, n_resamples=5)

    # an interruption (Ctrl-C) during the third job
    real_run_job, calls = sweep.run_job, []

    def interrupted(job, outdir, device="cpu"):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run_job(job, outdir, device)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(sweep, "run_job", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(jobs, resumed, progress=False)
    monkeypatch.setattr(sweep, "run_job", real_run_job)
    assert len(list((resumed / "jobs").glob("*.json"))) == 2
    with pytest.raises(sweep.ManifestError, match="3 of 5 jobs have no results"):
        sweep.collect(jobs, resumed)
    second = sweep.run_sweep(jobs, resumed, progress=False)
    assert (second["jobs"], second["skipped"]) == (3, 2)
    third = sweep.run_sweep(jobs, resumed, progress=False)
    assert (third["jobs"], third["skipped"]) == (0, 5)
    sweep.collect(jobs, resumed, n_resamples=5)
    assert tree(resumed) == tree(straight)
    assert len(json.loads((resumed / "results.json").read_text())) == 5


@pytest.mark.slow
def test_two_torchrun_processes_equal_one_bit_for_bit(tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl")
    one = run_cli([sys.executable, "-m", "diffusion_notes", "sweep", str(manifest), "--out", str(tmp_path / "one"),
                   "--quiet", "--bootstrap", "5"])
    assert one.returncode == 0, one.stderr
    two = run_cli([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "diffusion_notes", "sweep", str(manifest), "--out", str(tmp_path / "two"),
                   "--quiet", "--bootstrap", "5"])
    assert two.returncode == 0, two.stderr
    ranks = [json.loads((tmp_path / "two" / f"throughput-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["jobs"] for r in ranks] == [3, 2]  # jobs 0, 2, 4 and 1, 3
    assert "on 2 process(es)" in two.stdout and "images/s" in two.stdout
    a, b = tree(tmp_path / "one"), tree(tmp_path / "two")
    assert sorted(a) == sorted(b) and len([k for k in a if k.startswith("images/")]) == 5
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    cells = json.loads((tmp_path / "one" / "cells.json").read_text())
    assert len(cells) == 4 and cells[0]["seeds"] == 2 and cells[0]["n"] == 24


def test_yaml_grid_and_bad_files(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("- model: digits\n  sampler: [ddim, euler]\n  steps: 4\n  seed: [0, 1, 2]\n"
                    "- model: mini-sd\n  sampler: dpmpp_2m\n  nfe: 6\n  prompt: a handwritten seven\n  num_images: 2\n")
    jobs = sweep.validate_manifest(grid)
    assert len(jobs) == 7 and jobs[-1].condition == "a handwritten seven" and jobs[-1].labels() == [-1, -1]
    grid.write_text("- model: digits\n  sampler: [ddim, euler]\n  steps: 4\n  seed: -1\n")
    with pytest.raises(sweep.ManifestError, match="grid entry 2, field 'seed'"):
        sweep.validate_manifest(grid)
    assert sweep.main([str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "no such manifest file" in capsys.readouterr().err
    (tmp_path / "afile").write_text("mine")
    assert sweep.main([str(write_manifest(tmp_path / "m.jsonl")), "--out", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "afile").read_text() == "mine"


@pytest.mark.slow
def test_miniature_job_round_trips_through_its_png(tmp_path):
    """A mini-sd job: 32x32 RGB images side by side in one PNG, read back exactly, judged, with its prompt in the text."""
    raw = {"model": "mini-sd", "sampler": "dpmpp_2m", "nfe": 6, "num_images": 3, "seed": 4}
    job, problems = sweep.validate_job(raw)
    assert not problems and job.size == 32 and job.guidance == 7.5
    record = sweep.run_job(job, tmp_path)
    png = Image.open(tmp_path / record["image"])
    assert png.size == (96, 32) and png.mode == "RGB"
    assert parse_parameters(png.text["parameters"])["Sampler"] == "DPM++ 2M"
    assert np.array_equal(sweep.read_images(tmp_path / record["image"], job), sweep.generate(job))
    assert 0 <= record["judge_agreement"] <= 1


@pytest.mark.parametrize("model", ["digits", "mini-sd"])
def test_paired_comparison_of_two_cells(tmp_path, model):
    from diffusion_notes.quality.shootout import compare_cells

    # its value is the difference of the two cells' own FD-digits, each against the reference at its model's size
    jobs = [{"model": model, "sampler": s, "steps": 4, "seed": seed, "num_images": 10} for s in ("ddim", "euler") for seed in (0, 1)]
    manifest = write_manifest(tmp_path / "m.jsonl", jobs)
    sweep.run_sweep(sweep.validate_manifest(manifest), tmp_path / "out", progress=False)
    cells = sweep.collect(sweep.validate_manifest(manifest), tmp_path / "out", n_resamples=5)["cells"]
    result = compare_cells(tmp_path / "out", manifest, {"sampler": "ddim"}, {"sampler": "euler"}, n_resamples=20)
    assert result.value == pytest.approx(cells[0]["fd_digits"] - cells[1]["fd_digits"], rel=1e-12)
    assert result.std > 0
    with pytest.raises(ValueError, match="selects 2 cells"):
        compare_cells(tmp_path / "out", manifest, {"steps": 4}, {"sampler": "euler"})

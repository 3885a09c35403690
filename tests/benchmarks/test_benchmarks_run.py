"""Smoke tests of benchmarks/: each runs at tiny sizes and prints its table. No time is checked
(timings are never asserted; the measured figures live in docs/benchmarks.md)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _rows(out: str) -> list[list[str]]:
    lines = out.strip().splitlines()
    assert lines[1].startswith("|--"), out
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_unet_forward_benchmark_prints_its_table(capsys):
    from benchmarks import unet_forward

    out = unet_forward.main(["--size", "tiny", "--sides", "8", "--repeats", "1", "--warmup", "0", "--threads", "1",
                             "--precisions", "fp32", "bf16", "--plain"])
    rows = _rows(out)
    labels = [row[1] for row in rows]  # ours (prepacked, as loaded) then ours with plain nn.Conv2d, per precision
    assert labels[1] == labels[0] + ", plain nn.Conv2d" and labels[3] == labels[2] + ", plain nn.Conv2d"
    assert [row[1].split()[0].rstrip(",") for row in rows] == ["fp32", "fp32", "bf16", "bf16"]
    assert float(rows[0][-1]) < 1e-5 and float(rows[1][-1]) < 1e-5  # same tensors: equal outputs in fp32
    assert "ours/diffusers" in capsys.readouterr().out


def test_vae_decode_benchmark_prints_its_table():
    from benchmarks import vae_decode

    out = vae_decode.main(["--size", "tiny", "--sides", "4", "--repeats", "1", "--warmup", "0", "--threads", "1",
                           "--plain", "--precisions", "fp32", "bf16"])
    rows = _rows(out)
    assert [row[1].split(" (")[0] for row in rows] == ["ours", "ours, plain nn.Conv2d", "ours bf16"]
    assert rows[0][0] == "1x4x4x4 -> 8x8"
    assert float(rows[0][-1]) < 1e-5 and float(rows[1][-1]) < 1e-5  # the same tensors: the same image
    assert 0 < float(rows[2][-1]) < 5e-2  # bf16 rounding, no more


def test_sampler_overhead_benchmark_covers_every_registered_sampler():
    from benchmarks import sampler_overhead

    from diffusion_notes.samplers import SAMPLERS

    out = sampler_overhead.main(["--size", "tiny", "--side", "8", "--steps", "4", "--repeats", "1",
                                 "--unet-repeats", "1", "--threads", "1"])
    assert [row[0] for row in _rows(out)] == list(SAMPLERS)


def test_loading_benchmark_runs_fresh_processes_and_prints_its_table(tmp_path):
    from benchmarks import loading

    loading.make(tmp_path, size="tiny")
    out = loading.run(tmp_path, rounds=1, names=["ours fp32", "diffusers fp32"], side=8, threads=1)
    rows = _rows(out)
    assert [row[0] for row in rows] == ["ours fp32", "diffusers fp32"]
    assert all(float(row[4]) > 0 for row in rows)  # a peak RSS was read for each child


def test_gpu_benchmark_dry_run_writes_its_json_and_table(tmp_path):
    import json

    from benchmarks import gpu

    gpu.main(["--dry-run", "--out", str(tmp_path), "--repeats", "1"])
    report = json.loads((tmp_path / "gpu.json").read_text())
    measured = [r for r in report["results"] if "skipped" not in r]
    assert {r["family"] for r in measured} == {"sd1", "sdxl"} and {r["batch"] for r in measured} == {1, 4}
    assert all(r["ours"]["images_per_s"] > 0 and r["diffusers"]["images_per_s"] > 0 for r in measured)
    assert (tmp_path / "gpu.md").read_text().startswith("| model")


def test_first_picture_benchmark_times_fresh_processes(tmp_path):
    from benchmarks import first_picture, loading

    loading.make(tmp_path, size="tiny")
    out = first_picture.run(tmp_path, rounds=1, names=["ours fp32", "diffusers fp32"], until="step", side=16,
                            steps=2, threads=1)
    rows = _rows(out)
    assert [row[0] for row in rows] == ["ours fp32", "diffusers fp32"] and rows[0][1] == "float32"
    assert all(float(row[3].split()[0]) > 0 for row in rows)  # a peak RSS was read for each child
    assert all("first UNet step" in row[4] for row in rows) and rows[1][-1] == "1.00"


def test_unet_flops_benchmark_counts_work_and_profiles_it():
    from benchmarks import unet_flops

    out = unet_flops.main(["--size", "tiny", "--sides", "8", "--precisions", "fp32", "--repeats", "1",
                           "--warmup", "0", "--gemm", "256", "--threads", "1", "--against-diffusers"])
    work, profile, comparison = out.split("\n\n")
    rows = _rows(work)
    assert rows[0][0] == "2x4x8x8" and rows[0][1].split()[0] == "fp32"
    assert float(rows[0][2]) > 0 and rows[0][-1].endswith("%")
    shares = [float(part.split()[-1].rstrip("%")) for part in _rows(profile)[0][2].split(", ")]
    assert "convolution" in _rows(profile)[0][2] and abs(sum(shares) - 100) <= len(shares)  # shares add up to all
    classes = _rows(comparison.split(":\n", 1)[1])
    assert classes[-1][0] == "all" and "convolution" in [row[0] for row in classes]
    ours, theirs = (sum(float(row[i]) for row in classes[:-1]) for i in (1, 2))
    assert ours == pytest.approx(float(classes[-1][1]), abs=0.01) and theirs == pytest.approx(float(classes[-1][2]), abs=0.01)


def test_a_child_that_prints_nothing_is_timed_and_one_that_fails_is_reported():
    import sys

    from benchmarks.common import timed_child, timed_child_json

    wall, rss, lines = timed_child([sys.executable, "-c", "pass"])  # the miniature's bare-import baseline is silent
    assert wall > 0 and rss > 0 and lines == []
    with pytest.raises(RuntimeError, match="printed no result"):
        timed_child_json([sys.executable, "-c", "pass"])
    with pytest.raises(RuntimeError, match="exit 3"):
        timed_child([sys.executable, "-c", "raise SystemExit(3)"])
    assert timed_child_json([sys.executable, "-c", "print('x'); print('{\"a\": 1}')"])[2] == {"a": 1}

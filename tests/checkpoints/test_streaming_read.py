"""Safetensors files read tensor by tensor (checkpoints.io): the same tensors as the safetensors library
reads (the oracle), converted to ``dtype=`` as they arrive, and never the file's pages resident next to
their converted copies."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch

from diffusion_notes.checkpoints.io import load_state_dict
from diffusion_notes.errors import CheckpointError


def _mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w16": torch.randn(3, 5, generator=g).half(), "wbf": torch.randn(7, generator=g).bfloat16(),
        "w32": torch.randn(2, 3, 4, generator=g), "w64": torch.randn(4, generator=g, dtype=torch.float64),
        "ids": torch.arange(77)[None], "mask": torch.tensor([True, False, True]), "u8": torch.arange(9, dtype=torch.uint8),
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4),
    }


def test_reads_what_the_safetensors_library_reads(tmp_path):
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(_mixed_tensors(), path)
    expected, got = safetensors.torch.load_file(path), load_state_dict(path)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].dtype == expected[name].dtype and torch.equal(got[name], expected[name]), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtype_converts_floating_point_tensors_only(tmp_path, dtype):
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(_mixed_tensors(), path)
    expected, got = safetensors.torch.load_file(path), load_state_dict(path, dtype=dtype)
    for name, tensor in expected.items():
        want = tensor.to(dtype) if tensor.is_floating_point() else tensor
        assert got[name].dtype == want.dtype and torch.equal(got[name], want), name


def test_skipped_tensors_are_left_out(tmp_path):
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(_mixed_tensors(), path)
    assert set(load_state_dict(path, skip=lambda name: name.startswith("w"))) == {"ids", "mask", "u8", "scalar", "empty"}


def _write_raw(path, header: dict, data: bytes) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def test_a_tensor_whose_bytes_do_not_match_its_shape_is_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    _write_raw(path, {"w": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}, bytes(16))
    with pytest.raises(CheckpointError, match="claims shape"):
        load_state_dict(path)


def test_an_unknown_dtype_is_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    _write_raw(path, {"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 4]}}, bytes(4))
    with pytest.raises(CheckpointError, match="Q4"):
        load_state_dict(path)


def test_an_integer_target_dtype_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="floating-point"):
        load_state_dict(path, dtype=torch.int8)


_PEAK = textwrap.dedent("""
    import resource, sys, torch
    from diffusion_notes.checkpoints.io import load_state_dict
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    weights = load_state_dict(sys.argv[1], dtype=torch.float32)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024, sum(t.numel() * t.element_size() for t in weights.values()))
""")


def test_converting_an_fp16_file_holds_little_more_than_the_fp32_weights(tmp_path):
    # 96 MiB of fp16 in 48 tensors -> 192 MiB of fp32. Mapping the file and casting would hold both
    # (288 MiB); reading tensor by tensor holds the fp32 weights plus one 2 MiB tensor in flight.
    path = tmp_path / "big.safetensors"
    safetensors.torch.save_file({f"w{i}": torch.ones(1024, 1024, dtype=torch.float16) for i in range(48)}, path)
    done = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, check=True)
    grown, converted = map(int, done.stdout.split())
    assert converted == 192 * 2**20
    assert grown < 1.2 * converted

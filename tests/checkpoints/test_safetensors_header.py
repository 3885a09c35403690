"""checkpoints.safetensors_header: the one header reader gives what the safetensors library reads
(the oracle: ``safe_open``'s keys, shapes, dtypes and ``metadata()``), and metadata.read_header,
built on it, returns an empty table for containers without such a header."""

from __future__ import annotations

import safetensors
import safetensors.torch
import torch

from diffusion_notes.checkpoints.metadata import read_header
from diffusion_notes.checkpoints.safetensors_header import SAFETENSORS_DTYPES, read_safetensors_header


def _file(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"first_stage_model.encoder.conv_in.weight": torch.randn(8, 3, 3, 3, generator=g).half(),
               "model.diffusion_model.out.2.bias": torch.randn(4, generator=g),
               "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None]}
    path = tmp_path / "x.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"modelspec.resolution": "64x32", "note": "é"})
    return path


def test_tensors_and_metadata_as_safe_open_reads_them(tmp_path):
    path = _file(tmp_path)
    header = read_safetensors_header(path)
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert sorted(header.tensors) == sorted(f.keys())
        for name in f.keys():
            info = header.tensors[name]
            assert info["shape"] == list(f.get_slice(name).get_shape())
            assert SAFETENSORS_DTYPES[info["dtype"]] == f.get_tensor(name).dtype
        assert header.metadata == f.metadata()
        assert read_header(path) == f.metadata()
    meta = header.meta_tensors("first_stage_model.")
    assert list(meta) == ["encoder.conv_in.weight"]
    assert meta["encoder.conv_in.weight"].is_meta and meta["encoder.conv_in.weight"].shape == (8, 3, 3, 3)


def test_read_header_of_a_pickle_is_empty(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(2)}}, path)
    assert read_header(path) == {}

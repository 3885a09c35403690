"""The header of a safetensors file, read and checked in one place.

A safetensors file is ``<u64 n><n bytes of JSON><raw tensor bytes>``: an 8-byte little-endian
length, then a JSON object naming each tensor's ``dtype``, ``shape`` and ``data_offsets`` (a byte
range of the data that follows), plus an optional ``__metadata__`` table of strings (the format's
specification: the huggingface/safetensors README; ``safetensors.safe_open(...).metadata()`` reads
that table). Everything that reads a header uses :func:`read_safetensors_header`: the tensor reader
(``checkpoints.io``), the metadata reader (``checkpoints.metadata``) and the look at the VAE before
loading (``checkpoints.peek``).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError

__all__ = ["SAFETENSORS_DTYPES", "SafetensorsHeader", "read_safetensors_header", "starts_like_safetensors",
           "truncated"]

#: The largest header the safetensors library itself accepts.
MAX_HEADER_BYTES = 100_000_000

#: safetensors' dtype names (all little-endian, as the format prescribes).
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked header: where the data starts, each tensor's entry, and the ``__metadata__`` table."""

    #: byte offset of the first tensor's data in the file (8 + the header's length)
    data_start: int
    #: ``{name: {"dtype": "F16", "shape": [...], "data_offsets": [begin, end]}}``, offsets counted from ``data_start``
    tensors: dict[str, dict] = field(repr=False)
    metadata: dict[str, str] = field(default_factory=dict)

    def meta_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The tensors under ``prefix`` (removed) as ``meta``-device tensors: their shapes and dtypes, no data,
        so shape-reading code (``checkpoints.detect``) runs on a header without loading a single weight."""
        return {name[len(prefix):]: torch.empty(info["shape"], dtype=SAFETENSORS_DTYPES[info["dtype"]], device="meta")
                for name, info in self.tensors.items() if name.startswith(prefix)}


def starts_like_safetensors(head: bytes) -> bool:
    """True when a file's first bytes are a length followed by JSON (``{``; ``[`` too, refused later as not an
    object). Tested before the pickle test: a safetensors header length can itself start with the byte 0x80."""
    return len(head) > 8 and head[8:9] in (b"{", b"[")


def read_safetensors_header(path) -> SafetensorsHeader:
    """The header of the safetensors file ``path``; CheckpointError if it, or the data it describes, runs past
    the file's end or is malformed.

    Checked before any tensor is read, so a truncated download fails at once with a clear message
    instead of late and obscurely (a short read, or a shape error deep inside a model).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8).ljust(8, b"\0"))
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise truncated(path, f"its header claims {header_len} bytes but the file has {size}")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise truncated(path, "its JSON header is malformed") from exc
    _check_header(path, header, size - 8 - header_len)
    metadata = header.pop("__metadata__", {})
    return SafetensorsHeader(8 + header_len, header, metadata)


def _check_header(path: Path, header, data_size: int) -> None:
    """Every entry of a safetensors header well formed, before a single tensor is read: a JSON object;
    each tensor a known ``dtype``, a ``shape`` of non-negative integers and ``data_offsets`` ``[begin,
    end]`` inside the data whose length is the shape's bytes, no two tensors' bytes overlapping;
    ``__metadata__`` a str -> str table."""
    if not isinstance(header, dict):
        raise truncated(path, f"its JSON header is a {type(header).__name__}, not an object of tensors")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise truncated(path, "its __metadata__ is not a table of strings")
    ranges = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise truncated(path, f"tensor {name!r} is described by a {type(info).__name__}, not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise truncated(path, f"tensor {name!r} has dtype {dtype!r}; known: {', '.join(SAFETENSORS_DTYPES)}")
        if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
            raise truncated(path, f"tensor {name!r} has shape {shape!r}, not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)):
            raise truncated(path, f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
        begin, end = offsets
        if begin > end or end > data_size:
            raise truncated(path, f"tensor {name!r} needs data bytes {begin}..{end} but only {data_size} are present")
        if math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize != end - begin:
            raise truncated(path, f"tensor {name!r} claims shape {shape} of {dtype} but {end - begin} bytes")
        ranges.append((begin, end, name))
    ranges.sort()
    for (_, end, first), (begin, _, second) in zip(ranges, ranges[1:]):
        if begin < end:
            raise truncated(path, f"tensors {first!r} and {second!r} claim the same data bytes")


def _is_count(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def truncated(path: Path, why: str) -> CheckpointError:
    """The error for a safetensors file whose header or data is damaged."""
    return CheckpointError(f"{path}: truncated or corrupt safetensors file ({why}); download it again.")

r"""Reading and writing checkpoint files without ever running code from them.

A Stable Diffusion checkpoint arrives in one of three containers, and the file's **first bytes**
decide which reader opens it (names can lie: a ``.ckpt`` may hold safetensors bytes, a
``.safetensors`` a pickle):

* ``<u64 n>{``: **safetensors**, an 8-byte little-endian header length ``n``, a JSON header
  naming each tensor's dtype, shape and byte range, then the raw bytes. The header is read and
  checked by :mod:`~diffusion_notes.checkpoints.safetensors_header`; the tensors are read here one
  by one (converted to the wanted dtype as each arrives), as ``safetensors.torch.load_file`` would.
* ``PK\x03\x04``: a **torch.save zip archive** (``.ckpt``, ``.pt``, ``.bin`` since PyTorch 1.6).
  Read memory-mapped by ``torch.load``.
* ``\x80``: a **legacy torch.save pickle** (PyTorch < 1.6). Read by ``torch.load``.

The safety policy
-----------------
Pickles are programs: unpickling can call any importable function (``os.system`` included).
Every pickle is therefore read with ``torch.load(weights_only=True)``, PyTorch's restricted
unpickler that builds only tensors and plain containers, and never with ``weights_only=False``.
A file that needs anything more is refused with a :class:`CheckpointError`; nothing in it runs.
The one addition to PyTorch's allow-list is an empty placeholder for PyTorch Lightning's
``ModelCheckpoint`` class, which CompVis training checkpoints (``sd-v1-4.ckpt`` and kin) use as a
dictionary key under ``"callbacks"``; the placeholder has no methods, so allowing it runs nothing.

A pickle named ``.safetensors`` is still read, through the same guarded pickle reader, with a
warning that the extension is wrong: the content, not the name, decides how a file is opened, and
the guarded reader is as safe for it as for any ``.ckpt``.

Counterparts: ``diffusers.models.model_loading_utils.load_state_dict`` (chooses by extension),
CompVis ``ldm/util.py`` / ``scripts/txt2img.py`` ``load_model_from_config`` (``torch.load`` with
full unpickling and ``pl_sd["state_dict"]``), ``safetensors.torch.load_file``.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import safetensors.torch
import torch

from ..errors import CheckpointError
from .safetensors_header import (SAFETENSORS_DTYPES, SafetensorsHeader, read_safetensors_header,
                                 starts_like_safetensors, truncated)

__all__ = ["CheckpointError", "load_state_dict", "save_state_dict", "refuse_existing"]

_ACCEPTED = "safetensors, a torch.save zip checkpoint (.ckpt/.pt/.bin) or a legacy torch.save pickle"
_LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def load_state_dict(path: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                    skip: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` dict stored in a checkpoint file, whatever its container.

    The reader is chosen from the file's first bytes (see the module docstring). A CompVis
    ``{"state_dict": {...}, "global_step": ...}`` wrapper is unwrapped and the non-tensor
    bookkeeping dropped. ``dtype``: floating-point tensors are converted to it (integer ones, such
    as CLIP's ``position_ids``, are kept); ``skip(name)`` True leaves a tensor out.

    Safetensors files are read tensor by tensor with ordinary file reads, each converted as soon as
    it is read: the process then holds the converted weights plus one tensor in flight, never the
    file's pages next to their converted copies (memory-mapping the file and casting afterwards keeps
    both: 2 GB of fp16 pages beside 4.3 GB of fp32 weights for SD 1.5). Skipped tensors are never
    read. Zip checkpoints are memory-mapped by ``torch.load`` and converted afterwards.

    Raises :class:`CheckpointError` for a missing path, a folder, an empty file, a git-LFS pointer,
    a truncated file, a pickle that contains code, a file that is not a checkpoint, a checkpoint
    that holds no tensors, or a ``device`` this machine does not have.
    """
    path = Path(path)
    kind = _sniff(path)
    device = _usable_device(device, path)
    if dtype is not None and not dtype.is_floating_point:
        raise CheckpointError(f"{path}: dtype={dtype} asked for; weights convert to a floating-point dtype only.")
    skip = skip or (lambda name: False)
    if kind == "safetensors":
        return _read_safetensors(path, read_safetensors_header(path), device, dtype, skip)
    if path.suffix == ".safetensors":
        warnings.warn(
            f"{path}: named .safetensors but is a torch pickle; read with the weights-only loader. "
            "Rename it to .ckpt, or re-save it with save_state_dict to get a real safetensors file.",
            stacklevel=2,
        )
    tensors = _unwrap_state_dict(_read_pickle(path, device, zipped=kind == "zip"), path)
    return {name: _converted(tensor, dtype) for name, tensor in tensors.items() if not skip(name)}


def _converted(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``tensor`` in ``dtype`` if it is floating-point and ``dtype`` is given; else unchanged."""
    if dtype is None or not tensor.is_floating_point() or tensor.dtype == dtype:
        return tensor
    return tensor.to(dtype)


def _sniff(path: Path) -> str:
    """``"safetensors"``, ``"zip"`` or ``"pickle"``, from the first bytes; CheckpointError otherwise."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file; check the path (relative paths start at {Path.cwd()}).")
    if path.is_dir():
        raise CheckpointError(
            f"{path}: this is a folder, not a checkpoint file: "
            "use StableDiffusion.from_pretrained for diffusers folders."
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file (a named pipe, a device or a socket); nothing was read "
                              "from it. Give the path of a checkpoint file.")
    with open(path, "rb") as f:
        head = f.read(len(_LFS_POINTER))
    if not head:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); the download or copy failed, fetch it again.")
    if head.startswith(_LFS_POINTER):
        raise CheckpointError(
            f"{path}: this is a git-LFS pointer, not the weights; run `git lfs pull` in the cloned repository."
        )
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if starts_like_safetensors(head):  # before the pickle test (see there)
        return "safetensors"
    if head[0] == _PICKLE_PROTO:
        return "pickle"
    raise CheckpointError(f"{path}: not a checkpoint ({_describe(head)}); accepted formats: {_ACCEPTED}.")


def _usable_device(device: str | torch.device, path: Path) -> torch.device:
    # Checked up front so a missing GPU is not reported later as a damaged file by the readers.
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: device={device!r} is not a torch device; use e.g. 'cpu' or 'cuda'.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"{path}: device={str(device)!r} asked for, but CUDA is not available; use device='cpu'.")
    return device


def _describe(head: bytes) -> str:
    # A short guess at what the file is, because "not a checkpoint" alone does not tell the user what went wrong.
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff"):
        return "it is an image"
    if head.lstrip().startswith(b"<"):
        return "it is an HTML/XML page, probably an error page saved by a failed download"
    if head.lstrip().startswith(b"{"):
        return "it is JSON text; config files belong next to the weights, not in place of them"
    return "unrecognised first bytes"


def _read_safetensors(path: Path, header: SafetensorsHeader, device: torch.device, dtype: torch.dtype | None,
                      skip: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """Each tensor read in file order, converted, then moved to ``device``.

    What ``safetensors.torch.load_file`` returns, without mapping the file: a mapped file's pages
    count in the process's memory for as long as any tensor of the file lives. A tensor that is
    converted (or moved) is read into one reused scratch buffer, since the conversion writes a new
    tensor anyway; one kept as stored gets a buffer of its own. The header has been checked
    (:func:`~diffusion_notes.checkpoints.safetensors_header.read_safetensors_header`): every dtype is
    known and every byte range fits its shape and the file.
    """
    entries = sorted(((name, info) for name, info in header.tensors.items() if not skip(name)),
                     key=lambda entry: entry[1]["data_offsets"][0])
    tensors, scratch = {}, torch.empty(0, dtype=torch.uint8)
    with open(path, "rb", buffering=0) as f:
        for name, info in entries:
            start, end = info["data_offsets"]
            stored = SAFETENSORS_DTYPES[info["dtype"]]
            copied = device.type != "cpu" or (dtype is not None and stored.is_floating_point and stored != dtype)
            if copied and scratch.numel() < end - start:
                scratch = torch.empty(end - start, dtype=torch.uint8)
            raw = scratch[: end - start] if copied else torch.empty(end - start, dtype=torch.uint8)
            f.seek(header.data_start + start)
            _read_exactly(f, memoryview(raw.numpy()), path)
            tensors[name] = _converted(raw.view(stored).reshape(info["shape"]), dtype).to(device)
    return tensors


def _read_exactly(f, buffer: memoryview, path: Path) -> None:
    done = 0
    while done < len(buffer):  # one read() returns at most ~2 GiB on Linux
        n = f.readinto(buffer[done:])
        if not n:
            raise truncated(path, "the file ended inside a tensor")
        done += n


# A data-only stand-in for pytorch_lightning's ModelCheckpoint (see the module docstring).
_LightningModelCheckpoint = type("ModelCheckpoint", (), {"__module__": "pytorch_lightning.callbacks.model_checkpoint"})


def _read_pickle(path: Path, device: str | torch.device, *, zipped: bool) -> object:
    """``torch.load`` with PyTorch's weights-only unpickler; its refusals become CheckpointErrors."""
    try:
        with torch.serialization.safe_globals([_LightningModelCheckpoint]):
            if path.suffix == ".safetensors":
                # torch.load sends any path named .safetensors to the safetensors reader; a file
                # handle bypasses that dispatch (at the cost of mmap, which needs a path).
                with open(path, "rb") as f:
                    return torch.load(f, map_location=device, weights_only=True)
            # mmap needs the zip layout, where each tensor's bytes are a separate aligned record.
            return torch.load(path, map_location=device, weights_only=True, mmap=zipped)
    except Exception as exc:
        raise _explain_pickle_failure(path, exc) from exc


def _explain_pickle_failure(path: Path, exc: Exception) -> CheckpointError:
    """One line for a failed ``torch.load``: a weights-only refusal names the globals it refused."""
    message = str(exc)
    if "Weights only load failed" in message:
        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", message))) or ["a non-weight object"]
        return CheckpointError(
            f"{path}: refused: the pickle contains code or objects other than weights ({', '.join(names)}); "
            "it was NOT executed. If you trust its source, convert it to .safetensors with a trusted tool "
            "in an isolated environment and load that file instead."
        )
    return CheckpointError(
        f"{path}: truncated, corrupt or not written by torch.save ({_first_line(exc)}); download it again."
    )


def _first_line(exc: Exception) -> str:
    # Library errors can span many lines; CheckpointError messages stay on one.
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded pickle, looking inside CompVis/Lightning's ``"state_dict"`` wrapper."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, not a dict of tensors; save model.state_dict(), not the object."
        )
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:5])) or "none"
        raise CheckpointError(
            f"{path}: loads but holds no tensors (top-level keys: {keys}); it is not a model checkpoint."
        )
    return tensors


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> None:
    """Write ``state_dict`` as a ``.safetensors`` file, atomically.

    The bytes go to a temporary file in the destination folder, which is renamed over ``path``
    only once complete (``os.replace`` is atomic within one filesystem): an interrupted save leaves
    no half-written file and never damages an existing one. ``overwrite=False`` refuses an existing
    ``path``. Tensors are moved to CPU and made contiguous; tensors that share memory (tied weights,
    or q/k/v views of one fused matrix) are cloned, because safetensors stores each tensor's bytes
    once and refuses aliases (``safetensors.torch.save_model`` drops them instead; cloning keeps
    every name). ``metadata`` is stored as safetensors' ``__metadata__`` string table.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: save_state_dict writes safetensors; give the file a .safetensors name.")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; give the path of the .safetensors file to write.")
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path}: already exists; pass overwrite=True to replace it, or choose another name.")
    tensors = _safetensors_ready(state_dict, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=_string_metadata(metadata, path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def refuse_existing(path: Path, overwrite: bool) -> None:
    """CheckpointError if ``path`` (a file or a folder about to be written) exists and ``overwrite`` is False."""
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path}: already exists; pass overwrite=True to replace it, or choose another path.")


def _safetensors_ready(state_dict: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, no two of which share memory."""
    ready, seen_storages = {}, set()
    for name, tensor in state_dict.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {name!r} is a {type(tensor).__name__}; safetensors stores only str -> tensor."
            )
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storages and tensor.numel():
            tensor = tensor.clone()
        seen_storages.add(tensor.untyped_storage().data_ptr())
        ready[name] = tensor
    return ready


def _string_metadata(metadata: Mapping[str, str] | None, path: Path) -> dict[str, str] | None:
    if metadata is None:
        return None
    bad = [k for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        raise CheckpointError(f"{path}: metadata must map str to str (bad entries: {bad}); json.dumps other values.")
    return dict(metadata)

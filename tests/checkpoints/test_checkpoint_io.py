"""Checkpoint reading/writing: every bad input gets a one-line CheckpointError, no pickle runs code."""

import os
import sys
import types

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffusion_notes.checkpoints import io as ckpt_io
from diffusion_notes.checkpoints import CheckpointError, load_state_dict, pick_ema, save_state_dict, split_by_prefix


def _weights():
    g = torch.Generator().manual_seed(0)
    return {
        "model.diffusion_model.conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "first_stage_model.b": torch.arange(5.0),
    }


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _raises(path, *words):
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, (word, message)
    return message


# ---------------------------------------------------------------- round trips


def test_safetensors_round_trip_with_metadata(tmp_path):
    path = tmp_path / "w.safetensors"
    save_state_dict(_weights(), path, metadata={"format": "pt", "note": "tiny"})
    _assert_same(load_state_dict(path), _weights())
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"format": "pt", "note": "tiny"}


def test_compvis_ckpt_with_lightning_bookkeeping_loads(tmp_path, monkeypatch):
    # The shape of sd-v1-4.ckpt: a state_dict wrapper beside Lightning's bookkeeping, whose
    # "callbacks" dict is keyed by the ModelCheckpoint class. Fake that module only while saving.
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    module.ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": module.__name__})
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module.__name__):
        monkeypatch.setitem(sys.modules, name, module if name == module.__name__ else types.ModuleType(name))
    path = tmp_path / "sd.ckpt"
    torch.save(
        {
            "state_dict": _weights(),
            "global_step": 5,
            "epoch": 2,
            "pytorch-lightning_version": "1.4.2",
            "callbacks": {module.ModelCheckpoint: {"best_model_score": torch.tensor(0.1), "dirpath": "logs/"}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}],
            "lr_schedulers": [],
        },
        path,
    )
    monkeypatch.delitem(sys.modules, module.__name__)
    _assert_same(load_state_dict(path), _weights())


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_torch_save_round_trip(tmp_path, zipped):
    path = tmp_path / "w.pt"
    torch.save({"state_dict": _weights(), "global_step": 5}, path, _use_new_zipfile_serialization=zipped)
    assert path.read_bytes()[:1] == (b"P" if zipped else b"\x80")
    _assert_same(load_state_dict(path), _weights())


def test_flat_pickle_without_wrapper_loads(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save(_weights(), path)
    _assert_same(load_state_dict(path), _weights())


def test_format_comes_from_content_not_name(tmp_path):
    path = tmp_path / "really_safetensors.ckpt"
    save_file(_weights(), path)
    _assert_same(load_state_dict(path), _weights())


def test_pickle_named_safetensors_loads_guarded_with_a_warning(tmp_path):
    path = tmp_path / "renamed.safetensors"
    torch.save({"state_dict": _weights()}, path)
    with pytest.warns(UserWarning, match="named .safetensors but is a torch pickle"):
        _assert_same(load_state_dict(path), _weights())


# ---------------------------------------------------------------- bad inputs


def test_missing_path(tmp_path):
    _raises(tmp_path / "nope.safetensors", "no such file")


def test_folder_points_to_from_pretrained(tmp_path):
    _raises(tmp_path, "folder", "StableDiffusion.from_pretrained")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.ckpt"
    path.write_bytes(b"")
    _raises(path, "empty")


def test_git_lfs_pointer(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 4265380512\n")
    _raises(path, "git-LFS pointer", "git lfs pull")


def test_truncated_safetensors_data(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file(_weights(), path)
    path.write_bytes(path.read_bytes()[:-16])
    _raises(path, "truncated", "data bytes", "download it again")


def test_truncated_safetensors_header(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file(_weights(), path)
    path.write_bytes(path.read_bytes()[:20])
    _raises(path, "truncated", "header")


def test_truncated_torch_zip(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": _weights()}, path)
    path.write_bytes(path.read_bytes()[:200])
    _raises(path, "truncated, corrupt", "download it again")


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, zipped):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": _weights(), "x": _RunsShell(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=zipped)
    message = _raises(path, "contains code", "system", "NOT executed", "safetensors")
    assert not marker.exists(), message

    # Control: the same payload unpickled without the guard really does run the shell command,
    # so the assertion above is not vacuous.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_png_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "preview.ckpt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    _raises(path, "not a checkpoint", "image", "safetensors", "torch.save")


def test_html_error_page_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("<!DOCTYPE html><html><body>Access denied</body></html>")
    _raises(path, "not a checkpoint", "HTML", "accepted formats")


def test_random_text_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("these are not the weights you are looking for")
    _raises(path, "not a checkpoint", "accepted formats")


def test_pickle_without_tensors(tmp_path):
    path = tmp_path / "meta.ckpt"
    torch.save({"global_step": 5, "epoch": 1}, path)
    _raises(path, "holds no tensors", "global_step")


def test_pickle_of_a_non_dict(tmp_path):
    path = tmp_path / "list.ckpt"
    torch.save([torch.ones(2)], path)
    _raises(path, "holds a list", "state_dict()")


# ---------------------------------------------------------------- saving


def test_save_refuses_to_overwrite_and_leaves_file_untouched(tmp_path):
    path = tmp_path / "w.safetensors"
    save_state_dict(_weights(), path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="already exists.*overwrite=True"):
        save_state_dict({"other": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    save_state_dict({"other": torch.zeros(3)}, path, overwrite=True)
    assert load_state_dict(path).keys() == {"other"}


def test_interrupted_save_leaves_existing_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_state_dict(_weights(), path)
    before = path.read_bytes()

    def crash_midway(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_io.safetensors.torch, "save_file", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_state_dict({"other": torch.zeros(3)}, path, overwrite=True)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.safetensors"]


def test_save_clones_aliased_and_noncontiguous_tensors(tmp_path):
    fused = torch.randn(6, 2)
    q, k, v = fused.chunk(3)
    state = {"q": q, "k": k, "v": v, "tied_a": fused, "tied_b": fused, "t": fused.T}
    path = tmp_path / "aliased.safetensors"
    save_state_dict(state, path)
    _assert_same(load_state_dict(path), {name: t.contiguous() for name, t in state.items()})


def test_save_rejects_wrong_extension_and_non_tensors(tmp_path):
    with pytest.raises(CheckpointError, match=r"\.safetensors name"):
        save_state_dict(_weights(), tmp_path / "w.ckpt")
    with pytest.raises(CheckpointError, match="'step' is a int"):
        save_state_dict({"step": 5}, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="metadata must map str to str"):
        save_state_dict(_weights(), tmp_path / "w.safetensors", metadata={"steps": 5})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- key conventions


def test_split_by_prefix_strips_and_prefers_longest_prefix():
    a, b, c, d = (torch.full((1,), float(i)) for i in range(4))
    state = {"model.diffusion_model.x": a, "model.other": b, "first_stage_model.y": c, "stray": d}
    groups = split_by_prefix(state, ["model.", "model.diffusion_model.", "first_stage_model.", "cond_stage_model."])
    assert groups == {
        "model.": {"other": b},
        "model.diffusion_model.": {"x": a},
        "first_stage_model.": {"y": c},
        "cond_stage_model.": {},
    }
    assert groups["model.diffusion_model."]["x"] is a


def _training_checkpoint():
    raw_w, raw_b, ema_w, ema_b, buffer = (torch.full((2,), float(i)) for i in range(5))
    return {
        "model.diffusion_model.input_blocks.0.0.weight": raw_w,
        "model.diffusion_model.input_blocks.0.0.bias": raw_b,
        "model.diffusion_model.time_embed.running": buffer,  # a buffer: LitEma keeps no copy
        "first_stage_model.w": raw_w,
        "model_ema.diffusion_modelinput_blocks00weight": ema_w,
        "model_ema.diffusion_modelinput_blocks00bias": ema_b,
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(1000),
    }, (raw_w, raw_b, ema_w, ema_b, buffer)


def test_pick_ema_maps_litema_names_back():
    state, (_, _, ema_w, ema_b, buffer) = _training_checkpoint()
    picked = pick_ema(state, use_ema=True)
    assert not any(k.startswith("model_ema.") for k in picked)
    assert picked["model.diffusion_model.input_blocks.0.0.weight"] is ema_w
    assert picked["model.diffusion_model.input_blocks.0.0.bias"] is ema_b
    assert picked["model.diffusion_model.time_embed.running"] is buffer


def test_pick_ema_default_keeps_stored_weights_and_drops_ema():
    state, (raw_w, raw_b, *_) = _training_checkpoint()
    picked = pick_ema(state)
    assert picked.keys() == {k for k in state if not k.startswith("model_ema.")}
    assert picked["model.diffusion_model.input_blocks.0.0.weight"] is raw_w


def test_pick_ema_requested_but_absent():
    with pytest.raises(CheckpointError, match="no model_ema.* weights.*use_ema=False"):
        pick_ema(_weights(), use_ema=True)


def test_pick_ema_from_a_different_network():
    state, _ = _training_checkpoint()
    state["model_ema.diffusion_modelout0weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match="match no model.diffusion_model"):
        pick_ema(state, use_ema=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_named_not_blamed_on_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_state_dict(_weights(), path)
    with pytest.raises(CheckpointError, match="CUDA is not available; use device='cpu'"):
        load_state_dict(path, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["w.safetensors", "w.ckpt"])
def test_load_straight_onto_the_gpu(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".ckpt"):
        torch.save({"state_dict": _weights()}, path)
    else:
        save_state_dict(_weights(), path)
    loaded = load_state_dict(path, device="cuda")
    assert all(t.is_cuda for t in loaded.values())
    _assert_same({k: v.cpu() for k, v in loaded.items()}, _weights())


def test_safetensors_whose_header_length_starts_with_the_pickle_byte(tmp_path):
    """A 128-byte (0x80) header: the first byte equals pickle's PROTO opcode, yet the file is safetensors."""
    import json
    import struct

    data = torch.arange(4, dtype=torch.float32)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    header = header + b" " * (128 - len(header))
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data.numpy().tobytes())
    assert path.read_bytes()[0] == 0x80
    assert torch.equal(load_state_dict(path)["w"], data)

"""The loaders import transformers' CLIP on a second thread while they read the weights
(``checkpoints.background_import``): the result is the same model, a failure there is the caller's to report,
and a file the loader refuses still gets its one line in a fresh process, where the import is really overlapped."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from diffusion_notes.checkpoints.background_import import CLIP_IMPORTS, import_in_background
from diffusion_notes.stable_diffusion import StableDiffusion


def test_nothing_starts_when_the_modules_are_imported_already():
    importlib.import_module("json")
    assert import_in_background(("json",)) is None


def test_a_failing_import_is_dropped_there_and_raised_again_by_the_caller(monkeypatch):
    raised = []
    monkeypatch.setattr(threading, "excepthook", raised.append)
    thread = import_in_background(("diffusion_notes_no_such_module", "json"))
    thread.join(timeout=30)
    assert not thread.is_alive() and raised == []
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("diffusion_notes_no_such_module")


_FRESH = textwrap.dedent("""
    import sys, threading, torch
    started = []
    _start = threading.Thread.start
    def start(self):
        started.append(self.name)
        return _start(self)
    threading.Thread.start = start
    from diffusion_notes.stable_diffusion import StableDiffusion
    assert not any(m.startswith("transformers") for m in sys.modules), "transformers imported before the load"
    sd = StableDiffusion.from_single_file(sys.argv[1], tokenizer=sys.argv[2], torch_dtype=torch.float32)
    context, _ = sd.prompt_encoder(["a red cube"])
    torch.save(context, sys.argv[3])
    print(",".join(started))
""")


def test_a_fresh_process_loads_the_same_model_with_the_import_overlapped(tiny, tmp_path):
    folder, _ = tiny("sd1")
    path = tmp_path / "sd1.safetensors"
    StableDiffusion.from_pretrained(folder).save_single_file(path)
    done = subprocess.run([sys.executable, "-c", _FRESH, str(path), str(folder), str(tmp_path / "context.pt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "diffusion-notes-import" in done.stdout.strip().split(",")  # the loader did start the import thread
    here = StableDiffusion.from_single_file(path, tokenizer=folder, torch_dtype=torch.float32)
    assert torch.equal(torch.load(tmp_path / "context.pt"), here.prompt_encoder(["a red cube"])[0])
    assert all(name in sys.modules for name in CLIP_IMPORTS)


def test_a_refused_file_still_gets_one_line_in_a_fresh_process(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}        ")
    done = subprocess.run([sys.executable, "-m", "diffusion_notes", "txt2img", "--prompt", "a cat", "--ckpt", str(bad),
                           "--outdir", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in done.stderr, done.stderr

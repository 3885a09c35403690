"""scripts/train_scratch_unet.py trains the network that notebook 23 defines (its cells tagged scratch-unet), and never
overwrites a file it was not told to."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("train_scratch_unet", ROOT / "scripts" / "train_scratch_unet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_notebooks_cells_define_a_unet_that_trains(tmp_path, capsys):
    script = _script()
    namespace = script.scratch_namespace()
    net = namespace["ScratchUNet"]()
    out = net(torch.randn(2, 1, 8, 8), torch.tensor([3, 900]), torch.tensor([4, 10]))
    assert out.shape == (2, 1, 8, 8) and bool((out == 0).all())      # zero-initialised output layer
    target = tmp_path / "w.safetensors"
    assert script.main(["--out", str(target), "--steps", "3"]) == 0
    with safe_open(str(target), "pt") as f:
        assert f.metadata()["steps"] == "3" and "train_scratch_unet.py" in f.metadata()["command"]
        assert set(f.keys()) == set(net.state_dict())
    assert script.main(["--out", str(target), "--steps", "3"]) == 1          # exists: refused
    assert "already exists" in capsys.readouterr().err

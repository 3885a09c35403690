"""Training-time LoRA (``diffusion_notes/adapters/lora_training.py``): the wrapped layers, saved as a kohya file and
merged back by ``load_lora`` (itself checked against diffusers' ``fuse_lora`` in tests/adapters), give the same
UNet, for sd-scripts' attention targets and for LCM-LoRA's targets (3x3 and strided convolutions, time projections)."""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.adapters.lora_training import attach_lora, kohya_names, kohya_state_dict, lora_targets
from diffusion_notes.mini_sd import load_mini_sd


def _eps(sd):
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 77, 64, generator=g)
    with torch.no_grad():
        return sd.unet(x, torch.tensor([30, 800]), context=context)


@pytest.mark.parametrize("convolutions", [False, True])
def test_wrapped_unet_equals_the_saved_file_merged_by_load_lora(convolutions, tmp_path):
    from safetensors.torch import save_file

    sd = load_mini_sd(torch_dtype=torch.float32, prepack=False)
    plain = _eps(sd)
    names = kohya_names(sd)
    targets = lora_targets(sd.unet, convolutions=convolutions)
    kinds = {type(sd.unet.get_submodule(t)).__name__ + str(getattr(sd.unet.get_submodule(t), "kernel_size", "")) for t in targets}
    wrapped = attach_lora(sd.unet, targets, rank=4, alpha=2.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(_eps(sd), plain)  # B starts at zero: the wrapped model is the model
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in wrapped.values():
            module.up.weight.copy_(0.05 * torch.randn(module.up.weight.shape, generator=g))
    trained = _eps(sd)
    assert (trained - plain).abs().max() > 1e-2
    save_file(kohya_state_dict(names, wrapped, 2.0), str(tmp_path / "lora.safetensors"))
    fresh = load_mini_sd(torch_dtype=torch.float32)
    fresh.load_lora(tmp_path / "lora.safetensors")
    assert (_eps(fresh) - trained).abs().max() / trained.abs().max() < 1e-5
    if convolutions:
        assert {"Conv2d(3, 3)", "Linear"} <= kinds and "input_blocks.0.0" not in targets and len(targets) > 100
    else:
        assert all(".proj_" in t or ".transformer_blocks." in t for t in targets)

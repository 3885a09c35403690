"""VAE swap: a standalone VAE read by ``load_vae`` / ``StableDiffusion.with_vae`` vs diffusers' own readers.

Oracle: diffusers ``AutoencoderKL.from_single_file(file, config=<the tiny model's folder>, subfolder="vae")``
for CompVis-layout files and ``AutoencoderKL.from_pretrained`` for a diffusers folder, on the same
tensors: encode (the posterior's mean and std) and decode must agree to 1e-5 relative in float32, and
must differ from the model's own VAE (a swap that changed nothing would pass trivially).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from diffusion_notes.checkpoints.vae_file import load_vae
from diffusion_notes.errors import CheckpointError
from diffusion_notes.stable_diffusion import StableDiffusion


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def random_compvis_vae(sd, seed: int = 0) -> dict:
    """The model's VAE tensors (CompVis names) plus noise: another VAE of the same architecture."""
    g = torch.Generator().manual_seed(seed)
    return {k: (v.float() + 0.05 * torch.randn(v.shape, generator=g)).contiguous() for k, v in sd.vae.state_dict().items()}


def ours_vs_diffusers(ours, theirs):
    """(relative differences of encode mean, encode std, decode), and ours' outputs."""
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    z = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        posterior = ours.vae.encode(image)
        their_posterior = theirs.encode(image).latent_dist
        decoded, their_decoded = ours.vae.decode(z), theirs.decode(z).sample
    return ((relative(posterior.mean, their_posterior.mean), relative(posterior.std, their_posterior.std),
             relative(decoded, their_decoded)), decoded)


@pytest.fixture
def sd1(tiny):
    folder = tiny("sd1")[0]
    return folder, StableDiffusion.from_pretrained(folder, torch_dtype=torch.float32)


@pytest.mark.parametrize("form", ["safetensors", "first_stage_model.safetensors", "ckpt"])
def test_compvis_vae_file_equals_diffusers_from_single_file(sd1, tmp_path, form):
    from diffusers import AutoencoderKL

    folder, sd = sd1
    tensors = random_compvis_vae(sd)
    if form == "ckpt":
        path = tmp_path / "vae.ckpt"  # CompVis's wrapper, as vae-ft-mse-840000-ema-pruned.ckpt
        torch.save({"state_dict": tensors, "global_step": 840000}, path)
    else:
        prefix = "first_stage_model." if form.startswith("first_stage_model") else ""
        path = tmp_path / "vae.safetensors"
        save_file({prefix + k: v for k, v in tensors.items()}, path)

    swapped = sd.with_vae(path)
    theirs = AutoencoderKL.from_single_file(str(path), config=str(folder), subfolder="vae", torch_dtype=torch.float32)
    differences, decoded = ours_vs_diffusers(swapped, theirs)
    print(f"VAE {form}: encode mean {differences[0]:.2e}, std {differences[1]:.2e}, decode {differences[2]:.2e}")
    assert max(differences) < 1e-5
    _, own_decoded = ours_vs_diffusers(sd, AutoencoderKL.from_pretrained(folder, subfolder="vae"))
    assert relative(decoded, own_decoded) > 1e-2  # the swap did change the decoder
    assert swapped.vae is not sd.vae and swapped.unet is sd.unet and sd.vae is not swapped.vae


def test_diffusers_vae_folder_equals_diffusers_from_pretrained(sd1, tmp_path):
    from diffusers import AutoencoderKL

    folder, sd = sd1
    other = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    other.save_pretrained(tmp_path / "vae")

    for given in (tmp_path / "vae", tmp_path):  # the vae/ folder itself, or a folder holding one
        differences, _ = ours_vs_diffusers(sd.with_vae(given), other)
        print(f"VAE folder {given.name}: encode mean {differences[0]:.2e}, std {differences[1]:.2e}, "
              f"decode {differences[2]:.2e}")
        assert max(differences) < 1e-5


def test_with_vae_leaves_the_model_unchanged(sd1, tmp_path):
    _, sd = sd1
    before = {k: v.clone() for k, v in sd.vae.state_dict().items()}
    path = tmp_path / "vae.safetensors"
    save_file(random_compvis_vae(sd), path)
    vae_object = sd.vae
    sd.with_vae(load_vae(path, torch_dtype=torch.float32))
    assert sd.vae is vae_object
    assert all(torch.equal(before[k], v) for k, v in sd.vae.state_dict().items())


def test_a_vae_in_another_dtype_is_refused_not_moved(sd1, tmp_path):
    from diffusion_notes.errors import SettingsError

    _, sd = sd1
    path = tmp_path / "vae.safetensors"
    save_file(random_compvis_vae(sd), path)
    half = load_vae(path, torch_dtype=torch.bfloat16)
    with pytest.raises(SettingsError, match="torch.bfloat16.*load_vae\\(path, torch_dtype=sd.dtype"):
        sd.with_vae(half)
    assert next(half.vae.parameters()).dtype == torch.bfloat16


def test_sdxl_vae_folder_is_refused_on_sd1_by_its_scaling_factor(sd1, tmp_path):
    """SDXL's VAE has SD 1.5's shapes; only its config.json's scaling_factor (0.13025, as stabilityai/sdxl-vae
    states it) tells them apart."""
    folder, sd = sd1
    shutil.copytree(folder / "vae", tmp_path / "sdxl-vae")
    config = json.loads((tmp_path / "sdxl-vae" / "config.json").read_text())
    (tmp_path / "sdxl-vae" / "config.json").write_text(json.dumps(config | {"scaling_factor": 0.13025}))
    with pytest.raises(CheckpointError, match=r"scaled by 0.13025 \(SDXL's\).*another model family"):
        sd.with_vae(tmp_path / "sdxl-vae")


def test_our_single_file_states_its_scale_factor(sd1, tmp_path):
    """A file written by save_single_file carries its scale factor: one stating SDXL's is refused for SD 1."""
    folder, sd = sd1
    checkpoint = tmp_path / "sdxl-scaled.safetensors"
    StableDiffusion.from_pretrained(folder).save_single_file(checkpoint, metadata=None)
    from diffusion_notes.checkpoints.metadata import read_header
    header = read_header(checkpoint)
    assert header["diffusion_notes.scale_factor"] == "0.18215"
    assert sd.with_vae(checkpoint).vae is not sd.vae  # its own scale factor: accepted
    from safetensors import safe_open
    with safe_open(checkpoint, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, checkpoint, metadata=header | {"diffusion_notes.scale_factor": "0.13025"})
    with pytest.raises(CheckpointError, match="0.13025"):
        sd.with_vae(checkpoint)


def test_other_latent_channels_are_refused(sd1, tmp_path):
    from diffusers import AutoencoderKL

    folder, sd = sd1
    config = json.loads((folder / "vae" / "config.json").read_text())
    config.update(latent_channels=16)
    wide = AutoencoderKL.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    wide.save_pretrained(tmp_path / "vae16")
    with pytest.raises(CheckpointError, match="16 latent channels.*another model family"):
        sd.with_vae(tmp_path / "vae16")


@pytest.mark.parametrize("make, message", [
    (lambda d: save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 2)}, d / "f.safetensors"), "a LoRA file"),
    (lambda d: save_file({"weight": torch.zeros(2)}, d / "f.safetensors"), "not a VAE"),
    (lambda d: (d / "f").mkdir(), "without a config.json"),
    (lambda d: None, "no such VAE"),
])
def test_bad_vae_sources_are_one_clear_line(sd1, tmp_path, make, message):
    _, sd = sd1
    make(tmp_path)
    target = tmp_path / ("f" if message == "without a config.json" else "f.safetensors")
    with pytest.raises(CheckpointError, match=message) as info:
        sd.with_vae(target)
    assert "\n" not in str(info.value)


def test_diffusers_layout_file_without_its_config_is_refused(sd1, tmp_path):
    folder, sd = sd1
    shutil.copy(folder / "vae" / "diffusion_pytorch_model.safetensors", tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError, match="diffusers' layout.*config.json"):
        sd.with_vae(tmp_path / "vae.safetensors")

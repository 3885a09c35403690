"""Tiny random Stable Diffusion checkpoints on disk, for the model and pipeline tests.

The models are diffusers' and transformers' own classes with random weights, built by
``benchmarks/random_models.py`` (the one place that builds them, shared with the benchmarks); they
are the independent oracles of the model tests (diffusers is test-only) and the fixtures of the
text-to-image tests. ``make_tiny_diffusers_folder(path, family)`` writes a diffusers-layout folder for
``family`` in ``FAMILIES`` and returns the diffusers pipeline that wrote it; ``write_original_yaml``
describes the same tiny model as a CompVis inference YAML.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.random_models import FAMILIES, tiny_pipeline

__all__ = ["FAMILIES", "make_tiny_diffusers_folder", "write_original_yaml"]


def make_tiny_diffusers_folder(path, family: str, seed: int = 0):
    """Write a tiny random ``family`` model as a diffusers folder at ``path``; returns the diffusers pipeline."""
    path = Path(path)
    pipe = tiny_pipeline(family, path.parent / f".{path.name}-tokenizers", seed)
    pipe.save_pretrained(path)
    return pipe


def write_original_yaml(path, family: str, parameterization: str = "eps") -> Path:
    """A CompVis-style inference YAML describing the tiny ``family`` model (for ``from_single_file(config=)``)."""
    import yaml

    unet = {"in_channels": 9 if family == "sd1-inpaint" else 4, "out_channels": 4, "model_channels": 32,
            "channel_mult": [1, 2], "num_res_blocks": 2}
    if family.startswith("sd1"):
        unet.update(attention_resolutions=[1], num_heads=8, context_dim=64, transformer_depth=1)
    elif family == "sd2":
        unet.update(attention_resolutions=[2], num_head_channels=64, context_dim=64, transformer_depth=1,
                    use_linear_in_transformer=True)
    else:
        unet.update(attention_resolutions=[2], num_head_channels=64, context_dim=192, transformer_depth=[0, 2],
                    use_linear_in_transformer=True, adm_in_channels=80, num_classes="sequential")
    first_stage = {"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "in_channels": 3, "out_ch": 3,
                                                "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": []}}
    params = {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "parameterization": parameterization,
              "scale_factor": 0.13025 if family == "sdxl" else 0.18215,
              "unet_config": {"params": unet}, "first_stage_config": {"params": first_stage}}
    if family == "sdxl":
        params["network_config"] = params.pop("unet_config")
    Path(path).write_text(yaml.safe_dump({"model": {"params": params}}))
    return Path(path)

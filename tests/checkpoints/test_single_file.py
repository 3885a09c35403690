"""Original single files: our writer produces the ecosystem's layout, and we read it back exactly.

The oracle is diffusers' own ``from_single_file(path, config=<diffusers folder>)`` reading the file
we wrote: if its networks give diffusers' outputs, our layout and key names are CompVis's.
"""

from __future__ import annotations

import torch

from diffusion_notes.stable_diffusion import StableDiffusion

from models.builders import write_original_yaml
from .oracles import PROMPTS, diffusers_prompt, diffusers_unet, max_diff, our_unet, unet_inputs

TOL = 1e-5


def _roundtrip(tiny, tmp_path, family, yaml_parameterization=None):
    folder, pipe = tiny(family)
    model = StableDiffusion.from_pretrained(folder)
    path = tmp_path / f"{family}.safetensors"
    model.save_single_file(path)
    yaml = write_original_yaml(tmp_path / f"{family}.yaml", family, yaml_parameterization) if yaml_parameterization else None
    return folder, pipe, model, path, StableDiffusion.from_single_file(path, config=yaml, tokenizer=folder)


def _assert_same_networks(a, b, pooled=None):
    x, t, context = unet_inputs(a.config.unet)
    assert torch.equal(our_unet(a, x, t, context, pooled), our_unet(b, x, t, context, pooled))
    z = torch.randn(1, 4, 2, 2)
    with torch.no_grad():
        assert torch.equal(a.vae.decode(z), b.vae.decode(z))
    for ours, theirs in zip(a.encode_prompt(PROMPTS), b.encode_prompt(PROMPTS)):
        assert (ours is None and theirs is None) or torch.equal(ours, theirs)


def _assert_diffusers_reads_it(pipeline_cls, path, folder, model, pooled=None):
    theirs = pipeline_cls.from_single_file(str(path), config=str(folder), local_files_only=True)
    x, t, context = unet_inputs(model.config.unet)
    assert max_diff(diffusers_unet(theirs, x, t, context, pooled), our_unet(model, x, t, context, pooled)) < TOL
    z = torch.randn(1, 4, 2, 2)
    with torch.no_grad():
        assert max_diff(theirs.vae.decode(z).sample, model.vae.decode(z)) < TOL
    context, pooled_text = model.encode_prompt(PROMPTS)
    their_context, their_pooled = diffusers_prompt(theirs)
    assert max_diff(context, their_context) < TOL
    if pooled_text is not None:
        assert max_diff(pooled_text, their_pooled) < TOL


def test_sd1_roundtrip_detects_everything_from_shapes(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline

    folder, _, model, path, reloaded = _roundtrip(tiny, tmp_path, "sd1")
    assert reloaded.config == model.config  # heads, widths, depths found without a YAML
    _assert_same_networks(model, reloaded)
    _assert_diffusers_reads_it(StableDiffusionPipeline, path, folder, model)


def test_sd1_inpainting_has_nine_input_channels(tiny, tmp_path):
    _, _, model, _, reloaded = _roundtrip(tiny, tmp_path, "sd1-inpaint")
    assert reloaded.config.unet.in_channels == 9
    _assert_same_networks(model, reloaded)


def test_sd2_v_prediction_comes_from_the_yaml(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline

    folder, _, model, path, reloaded = _roundtrip(tiny, tmp_path, "sd2", yaml_parameterization="v")
    assert reloaded.prediction_type == "v" and reloaded.config == model.config
    _assert_same_networks(model, reloaded)
    _assert_diffusers_reads_it(StableDiffusionPipeline, path, folder, model)
    # Our file records "v" in its header; a file without that record (as released SD 2.x files are)
    # cannot tell from its weights: eps by default, the flag overrides.
    assert StableDiffusion.from_single_file(path, tokenizer=folder).prediction_type == "v"
    released = _without_metadata_keys(path, tmp_path / "released.safetensors", ["diffusion_notes.prediction_type"])
    assert StableDiffusion.from_single_file(released, tokenizer=folder).prediction_type == "eps"
    assert StableDiffusion.from_single_file(released, tokenizer=folder, prediction_type="v").prediction_type == "v"


def _without_metadata_keys(path, out, keys):
    """A copy of the single file ``path`` whose safetensors header lacks ``keys``."""
    from diffusion_notes.checkpoints.io import load_state_dict, save_state_dict
    from diffusion_notes.checkpoints.metadata import read_header

    header = {k: v for k, v in read_header(path).items() if k not in keys}
    save_state_dict(load_state_dict(path), out, metadata=header)
    return out


def test_sdxl_roundtrip_with_two_text_encoders(tiny, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    folder, _, model, path, reloaded = _roundtrip(tiny, tmp_path, "sdxl", yaml_parameterization="eps")
    assert reloaded.config.unet == model.config.unet and reloaded.scale_factor == 0.13025  # from the YAML
    pooled = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    _assert_same_networks(model, reloaded, pooled)
    _assert_diffusers_reads_it(StableDiffusionXLPipeline, path, folder, model, pooled)
    # One plain tokenizer folder serves both encoders; the OpenCLIP one then pads with "!" as open_clip does.
    plain = StableDiffusion.from_single_file(path, tokenizer=folder / "tokenizer")
    assert plain.tokenizers[0].pad_token == "<|endoftext|>" and plain.tokenizers[1].pad_token == "!"
    for ours, theirs in zip(plain.encode_prompt(PROMPTS), model.encode_prompt(PROMPTS)):
        assert torch.equal(ours, theirs)


def test_use_ema_takes_the_model_ema_weights(tiny, tmp_path):
    from diffusion_notes.checkpoints.io import load_state_dict, save_state_dict
    from diffusion_notes.checkpoints.metadata import read_header

    _, _, model, path, _ = _roundtrip(tiny, tmp_path, "sd1")
    state_dict = dict(load_state_dict(path))
    key = "model.diffusion_model.out.2.bias"
    state_dict["model_ema.diffusion_modelout2bias"] = torch.full_like(state_dict[key], 7.0)
    save_state_dict(state_dict, tmp_path / "ema.safetensors", metadata=read_header(path))
    folder = tiny("sd1")[0]
    assert not torch.equal(StableDiffusion.from_single_file(tmp_path / "ema.safetensors", tokenizer=folder)
                           .unet.out[2].bias, torch.full((4,), 7.0))
    ema = StableDiffusion.from_single_file(tmp_path / "ema.safetensors", tokenizer=folder, use_ema=True)
    assert torch.equal(ema.unet.out[2].bias, torch.full((4,), 7.0))


def test_loading_assigns_the_memory_mapped_tensors_without_copying(tiny, tmp_path):
    from diffusion_notes.checkpoints import key_layout
    from diffusion_notes.checkpoints.io import load_state_dict
    from diffusion_notes.models import UNetModel
    from diffusion_notes.checkpoints.building import build as _build

    _, _, model, path, reloaded = _roundtrip(tiny, tmp_path, "sd1")
    stored = key_layout.strip_prefix(load_state_dict(path), key_layout.UNET_PREFIX)
    unet = _build(UNetModel, model.config.unet, stored, "UNet", key_layout.UNET_PREFIX)
    assert all(p.data_ptr() == stored[name].data_ptr() for name, p in unet.named_parameters())
    assert not any(t.is_meta for t in [*reloaded.parameters(), *reloaded.buffers()])


def test_sd2_file_has_compvis_layer_count(tiny, tmp_path):
    from diffusion_notes.checkpoints.io import load_state_dict

    _, _, model, path, _ = _roundtrip(tiny, tmp_path, "sd2")
    from diffusion_notes.models.text import clip_transformer

    layers = len(clip_transformer(model.text_encoders[0]).encoder.layers)
    keys = load_state_dict(path)
    # the penultimate-layer encoder plus the never-read last layer, written as an identity block
    assert f"cond_stage_model.model.transformer.resblocks.{layers}.attn.in_proj_weight" in keys
    assert f"cond_stage_model.model.transformer.resblocks.{layers + 1}.attn.in_proj_weight" not in keys
    assert not keys[f"cond_stage_model.model.transformer.resblocks.{layers}.mlp.c_proj.weight"].any()


def test_released_file_extras_are_ignored(tiny, tmp_path):
    """CompVis files also carry schedule buffers, LitEma bookkeeping, CLIP's position_ids and (in
    training checkpoints) the autoencoder's loss; none of them belongs to the three networks."""
    from diffusion_notes.checkpoints.io import load_state_dict

    folder, _, model, path, _ = _roundtrip(tiny, tmp_path, "sd1")
    state_dict = {k: v.clone() for k, v in load_state_dict(path).items()}
    state_dict.update({
        "betas": torch.zeros(1000), "alphas_cumprod": torch.zeros(1000), "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(1), "first_stage_model.loss.logvar": torch.zeros(()),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
    })
    torch.save({"state_dict": state_dict, "global_step": 470000}, tmp_path / "released.ckpt")
    _assert_same_networks(model, StableDiffusion.from_single_file(tmp_path / "released.ckpt", tokenizer=folder))

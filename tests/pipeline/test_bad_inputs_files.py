"""Bad files and folders: each is one CheckpointError line naming the file and, where there is one,
the tensor (with both shapes) or the JSON/YAML key.

Issue 10's categories: malformed safetensors headers of every kind, files that are not regular
files, non-float tensors, one tensor of the wrong shape anywhere (UNet, VAE, text encoder), sizes
inferred from tensors that disagree with their siblings, original YAMLs (syntax, non-mapping,
non-text, wrong types, contradictions, unsupported parameterization) and diffusers folders
(malformed JSON, configs that contradict the weights). Tiny random-weight models from
``tests/models/builders.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct

import pytest
import torch
import yaml

from diffusion_notes.checkpoints.io import load_state_dict, save_state_dict
from diffusion_notes.errors import CheckpointError
from diffusion_notes.stable_diffusion import StableDiffusion
from models.builders import write_original_yaml


def _one_line(call, *fragments) -> str:
    with pytest.raises(CheckpointError) as excinfo:
        call()
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# --------------------------------------------------------------------------------------------
# safetensors headers
# --------------------------------------------------------------------------------------------


def _raw_safetensors(path, header, data: bytes = b"") -> str:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return str(path)


_W = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
HEADERS = {
    "header is a list": ([_W], b"\0" * 8, "not an object"),
    "malformed JSON": (b'{"w": {"dtype": "F32",', b"", "malformed"),
    "entry is a number": ({"w": 5}, b"\0" * 8, "described by a int"),
    "unknown dtype": ({"w": _W | {"dtype": "F3"}}, b"\0" * 8, "dtype 'F3'"),
    "dtype not a string": ({"w": _W | {"dtype": 5}}, b"\0" * 8, "dtype 5"),
    "shape a string": ({"w": _W | {"shape": "2"}}, b"\0" * 8, "shape '2'"),
    "negative shape": ({"w": _W | {"shape": [-2]}}, b"\0" * 8, "shape [-2]"),
    "float shape": ({"w": _W | {"shape": [2.5]}}, b"\0" * 8, "shape [2.5]"),
    "no data_offsets": ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "data_offsets None"),
    "one offset": ({"w": _W | {"data_offsets": [0]}}, b"\0" * 8, "data_offsets [0]"),
    "offsets reversed": ({"w": _W | {"data_offsets": [8, 0]}}, b"\0" * 8, "needs data bytes 8..0"),
    "offsets past the end": ({"w": _W | {"data_offsets": [0, 16]}}, b"\0" * 8, "only 8 are present"),
    "bytes do not match the shape": ({"w": _W | {"shape": [3]}}, b"\0" * 8, "claims shape [3]"),
    "two tensors share bytes": ({"a": _W, "b": _W}, b"\0" * 8, "claim the same data bytes"),
    "metadata values not strings": ({"__metadata__": {"step": 5}, "w": _W}, b"\0" * 8, "__metadata__"),
    "metadata a list": ({"__metadata__": ["x"], "w": _W}, b"\0" * 8, "__metadata__"),
    "bool offsets": ({"w": _W | {"data_offsets": [False, 8]}}, b"\0" * 8, "data_offsets [False, 8]"),
}


@pytest.mark.parametrize("case", HEADERS)
def test_malformed_safetensors_headers(tmp_path, case):
    header, data, fragment = HEADERS[case]
    path = _raw_safetensors(tmp_path / "bad.safetensors", header, data)
    _one_line(lambda: load_state_dict(path), "bad.safetensors", fragment)


def test_headers_claiming_more_than_the_file(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    _one_line(lambda: load_state_dict(path), "claims 1000000 bytes")
    path.write_bytes(b"\x05\0\0")  # shorter than the 8-byte length field
    _one_line(lambda: load_state_dict(path), "short.safetensors")


# --------------------------------------------------------------------------------------------
# what is not a regular file
# --------------------------------------------------------------------------------------------


def test_a_named_pipe_is_refused_without_reading(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)  # opening it for reading would block forever: the check must not open it
    _one_line(lambda: load_state_dict(fifo), "not a regular file", "nothing was read")
    _one_line(lambda: StableDiffusion.from_single_file(fifo), "not a regular file")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_device_is_refused_without_reading():
    _one_line(lambda: load_state_dict("/dev/zero"), "not a regular file")


def test_folders_and_files_in_each_others_place(tiny, tmp_path):
    folder = tiny("sd1")[0]
    _one_line(lambda: StableDiffusion.from_single_file(folder), "folder", "from_pretrained")
    _one_line(lambda: StableDiffusion.from_pretrained(folder / "unet" / "config.json"), "a file",
              "from_single_file")


# --------------------------------------------------------------------------------------------
# checkpoint contents
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    """Single files of the tiny SD 1.x and 2.x models, and the folders that hold their tokenizers."""
    root = tmp_path_factory.mktemp("single-files")
    out = {}
    for family in ("sd1", "sd2"):
        path = root / f"{family}.safetensors"
        StableDiffusion.from_pretrained(tiny(family)[0]).save_single_file(path)
        out[family] = (path, tiny(family)[0])
    return out


def _edited(files, family, tmp_path, edit):
    path, tokenizer = files[family]
    state_dict = {k: v.clone() for k, v in load_state_dict(path).items()}
    edit(state_dict)
    out = tmp_path / f"edited-{family}.safetensors"
    save_state_dict(state_dict, out, overwrite=True)
    return lambda: StableDiffusion.from_single_file(out, tokenizer=tokenizer)


def _first(state_dict, pattern):
    return next(k for k in sorted(state_dict) if re.fullmatch(pattern, k))


def _reshaped(state_dict, pattern, dim=-1, delta=1):
    key = _first(state_dict, pattern)
    shape = list(state_dict[key].shape)
    shape[dim] += delta
    state_dict[key] = torch.zeros(shape)
    return key


WRONG_SHAPES = {  # (family, key pattern, dimension): one tensor deep inside each network
    "UNet output block conv": ("sd1", r"model\.diffusion_model\.output_blocks\.\d+\.0\.out_layers\.3\.weight", -1),
    "UNet attention projection": ("sd1", r"model\.diffusion_model\..*attn1\.to_q\.weight", 0),
    "UNet middle block norm": ("sd1", r"model\.diffusion_model\.middle_block\.0\.in_layers\.0\.bias", 0),
    "VAE decoder conv": ("sd1", r"first_stage_model\.decoder\.up\.\d+\.block\.0\.conv2\.weight", -1),
    "VAE attention": ("sd1", r"first_stage_model\.encoder\.mid\.attn_1\.q\.weight", -1),
    "CLIP MLP bias": ("sd1", r"cond_stage_model\.transformer\.text_model\.encoder\.layers\.1\.mlp\.fc2\.bias", 0),
    "OpenCLIP attention bias": ("sd2", r"cond_stage_model\.model\.transformer\.resblocks\.0\.attn\.out_proj\.bias", 0),
    "OpenCLIP fused q/k/v": ("sd2", r"cond_stage_model\.model\.transformer\.resblocks\.1\.attn\.in_proj_bias", 0),
}


@pytest.mark.parametrize("case", WRONG_SHAPES)
def test_one_tensor_of_the_wrong_shape_is_named_with_both_shapes(files, tmp_path, case):
    family, pattern, dim = WRONG_SHAPES[case]
    found = {}

    def edit(state_dict):
        key = _first(state_dict, pattern)
        found["key"], found["shape"] = key, tuple(state_dict[key].shape)
        _reshaped(state_dict, pattern, dim)

    load = _edited(files, family, tmp_path, edit)
    shape = list(found["shape"])
    shape[dim] += 1
    if "in_proj" in found["key"]:  # a fused q/k/v tensor: the message is about the third that fails
        message = _one_line(load, "third")
    else:
        message = _one_line(load, f"{tuple(shape)}", f"{found['shape']}")
    assert found["key"] in message  # as the file spells it (open_clip names too, though converted to load)


SIBLINGS = {  # one tensor whose size the architecture would be read from, corrupted alone
    "CLIP token embedding width": ("sd1", r"cond_stage_model\.transformer\.text_model\.embeddings\.token_embedding\.weight", 1),
    "CLIP final norm": ("sd1", r"cond_stage_model\.transformer\.text_model\.final_layer_norm\.weight", 0),
    "CLIP MLP width": ("sd1", r"cond_stage_model\.transformer\.text_model\.encoder\.layers\.0\.mlp\.fc1\.weight", 0),
    "OpenCLIP token embedding": ("sd2", r"cond_stage_model\.model\.token_embedding\.weight", 1),
    "UNet input conv width": ("sd1", r"model\.diffusion_model\.input_blocks\.0\.0\.weight", 0),
    "UNet time embedding": ("sd1", r"model\.diffusion_model\.time_embed\.0\.weight", 0),
    "UNet context width": ("sd1", r"model\.diffusion_model\..*attn2\.to_k\.weight", 1),
    "UNet output channels": ("sd1", r"model\.diffusion_model\.out\.2\.bias", 0),
    "VAE input conv width": ("sd1", r"first_stage_model\.encoder\.conv_in\.weight", 0),
    "VAE latent channels": ("sd1", r"first_stage_model\.post_quant_conv\.weight", 1),
}


@pytest.mark.parametrize("case", SIBLINGS)
def test_a_tensor_that_disagrees_with_its_siblings_is_the_one_blamed(files, tmp_path, case):
    family, pattern, dim = SIBLINGS[case]
    keys = []
    load = _edited(files, family, tmp_path, lambda sd: keys.append(_reshaped(sd, pattern, dim)))
    message = _one_line(load, keys[0])
    assert "other tensors" in message and "agree on" in message or "ambiguous" in message  # a pair: both named


def test_non_float_tensors_are_named(files, tmp_path):
    def to_int(state_dict):
        state_dict["model.diffusion_model.out.2.bias"] = state_dict["model.diffusion_model.out.2.bias"].long()

    _one_line(_edited(files, "sd1", tmp_path, to_int), "out.2.bias", "int64")

    def to_bool(state_dict):
        key = "first_stage_model.decoder.conv_out.bias"
        state_dict[key] = state_dict[key] > 0

    _one_line(_edited(files, "sd1", tmp_path, to_bool), "decoder.conv_out.bias", "bool")


def test_a_missing_tensor_the_architecture_is_read_from(files, tmp_path):
    def drop(state_dict):
        del state_dict["model.diffusion_model.out.2.weight"]

    _one_line(_edited(files, "sd1", tmp_path, drop), "out.2.weight")


# --------------------------------------------------------------------------------------------
# original YAML configs
# --------------------------------------------------------------------------------------------


def _yaml_edit(path, edit):
    document = yaml.safe_load(path.read_text())
    edit(document["model"]["params"])
    path.write_text(yaml.safe_dump(document))


def _set(key, value, where="params"):
    def edit(params):
        target = params if where == "params" else params["unet_config"]["params"]
        target[key] = value

    return edit


YAMLS = {
    "syntax error": (b"model: {params: [1, 2\n", "invalid YAML at line"),
    "a list": (b"- model\n- params\n", "the document must be a mapping"),
    "plain text": (b"just some words\n", "the document must be a mapping"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not a text file"),
    "model a string": (b"model: hello\n", "model must be a mapping"),
    "params a list": (b"model:\n  params: [1, 2]\n", "model.params must be a mapping"),
    "unet params a string": (b"model:\n  params:\n    unet_config:\n      params: abc\n",
                             "model.params.unet_config.params must be a mapping"),
    "num_heads a string": (_set("num_heads", "8", "unet"), "num_heads='8'"),
    "num_heads zero": (_set("num_heads", 0, "unet"), "num_heads=0"),
    "model_channels float": (_set("model_channels", 32.5, "unet"), "model_channels=32.5"),
    "parameterization x0": (_set("parameterization", "x0"), "parameterization='x0' is not supported"),
    "parameterization velocity": (_set("parameterization", "velocity"), "parameterization='velocity'"),
    "scale_factor a string": (_set("scale_factor", "abc"), "scale_factor='abc'"),
    "scale_factor negative": (_set("scale_factor", -1), "scale_factor=-1"),
    "timesteps a string": (_set("timesteps", "1000"), "timesteps='1000'"),
    "timesteps one": (_set("timesteps", 1), "timesteps=1"),
    "betas reversed": (lambda p: p.update(linear_start=0.02, linear_end=0.01), "must be smaller than"),
    "beta above one": (_set("linear_end", 2), "linear_end=2"),
    "in_channels contradicts the weights": (_set("in_channels", 9, "unet"), "in_channels=9 but the weights have 4"),
    "heads do not divide the width": (_set("num_heads", 3, "unet"), "num_heads=3"),
}


@pytest.mark.parametrize("case", YAMLS)
def test_bad_original_yamls_name_the_file_and_the_key(files, tmp_path, case):
    content, fragment = YAMLS[case]
    path = tmp_path / "v1-inference.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_original_yaml(path, "sd1")
        _yaml_edit(path, content)
    checkpoint, tokenizer = files["sd1"]
    _one_line(lambda: StableDiffusion.from_single_file(checkpoint, config=path, tokenizer=tokenizer),
              "v1-inference.yaml", fragment)


def test_a_missing_or_folder_yaml(files, tmp_path):
    checkpoint, tokenizer = files["sd1"]
    for path in (tmp_path / "nope.yaml", tmp_path):
        _one_line(lambda: StableDiffusion.from_single_file(checkpoint, config=path, tokenizer=tokenizer), "no such YAML")


# --------------------------------------------------------------------------------------------
# diffusers folders
# --------------------------------------------------------------------------------------------


def _json_edit(key, value):
    def edit(data):
        if value is _DELETE:
            del data[key]
        else:
            data[key] = value

    return edit


_DELETE = object()
FOLDERS = {
    "model_index malformed": ("model_index.json", b'{"_class_name": ', "malformed JSON"),
    "model_index a list": ("model_index.json", b"[1, 2]", "JSON list"),
    "unet config malformed": ("unet/config.json", b"{]", "malformed JSON"),
    "unet config missing a key": ("unet/config.json", _json_edit("block_out_channels", _DELETE), "'block_out_channels'"),
    "unet config wrong type": ("unet/config.json", _json_edit("block_out_channels", "abc"), "wrong type"),
    "unet config contradicts the weights": ("unet/config.json", _json_edit("cross_attention_dim", 32),
                                            "the config"),
    "vae config contradicts the weights": ("vae/config.json", _json_edit("latent_channels", 8), "vae/config.json"),
    "vae scaling factor a string": ("vae/config.json", _json_edit("scaling_factor", "x"), "scaling_factor='x'"),
    "unknown beta schedule": ("scheduler/scheduler_config.json", _json_edit("beta_schedule", "foo"), "'foo'"),
    "timesteps a string": ("scheduler/scheduler_config.json", _json_edit("num_train_timesteps", "1000"),
                           "num_train_timesteps='1000'"),
    "betas reversed": ("scheduler/scheduler_config.json", _json_edit("beta_start", 0.5), "must be smaller"),
    "unsupported prediction type": ("scheduler/scheduler_config.json", _json_edit("prediction_type", "sample"),
                                    "prediction_type='sample'"),
    "text encoder config malformed": ("text_encoder/config.json", b"{{", "malformed JSON"),
    "text encoder config contradicts the weights": ("text_encoder/config.json", _json_edit("intermediate_size", 96),
                                                    "text_encoder/config.json"),
    "vae config not text": ("vae/config.json", b"\xff\xfe\x00", "not a text file"),
    "text encoder width a string": ("text_encoder/config.json", _json_edit("hidden_size", "wide"), "wrong type"),
    "tokenizer file malformed": ("tokenizer/tokenizer.json", b"{not json", "tokenizer files cannot be read"),
}


@pytest.mark.parametrize("case", FOLDERS)
def test_bad_diffusers_folders_name_the_file(tiny, tmp_path, case):
    name, change, fragment = FOLDERS[case]
    folder = tmp_path / "model"
    shutil.copytree(tiny("sd1")[0], folder)
    target = folder / name
    if isinstance(change, bytes):
        target.write_bytes(change)
    else:
        data = json.loads(target.read_text())
        change(data)
        target.write_text(json.dumps(data))
    message = _one_line(lambda: StableDiffusion.from_pretrained(folder), fragment)
    assert name.split("/")[0] in message


def test_a_config_that_contradicts_the_weights_names_config_tensor_and_shapes(tiny, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny("sd1")[0], folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["cross_attention_dim"] = 32
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    message = _one_line(lambda: StableDiffusion.from_pretrained(folder), "unet/config.json", "attn2.to_k.weight",
                        "(32, 64)", "(32, 32)")
    assert "unet/" in message

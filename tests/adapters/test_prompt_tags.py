"""AUTOMATIC1111's ``<lora:name:weight>`` prompt tags: the parser, the LoRA folder, and one generation's merge.

The parser's expected values follow AUTOMATIC1111's rules (``modules/extra_networks.py``: the pattern
``<(\\w+):([^>]+)>`` replaced by nothing, arguments split at ``:``; ``extra_networks_lora.py``: the
second argument is the multiplier, 1.0 when absent). The generation with a tag is compared with the
same generation after an explicit ``load_lora`` of the file (whose equality to diffusers' ``fuse_lora``
is ``test_lora_diffusers.py``); the model's weights must be bit-identical afterwards, even when the
generation fails.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffusion_notes.adapters.prompt_tags import find_lora, prompt_loras, split_lora_tags
from diffusion_notes.errors import SettingsError
from diffusion_notes.infotext import parse_parameters
from diffusion_notes.settings import Conditioning
from diffusion_notes.stable_diffusion import StableDiffusion

from .lora_files import kohya_lora


# -- the parser ----------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, text, tags", [
    ("a cat <lora:bold:0.8>", "a cat ", [("bold", 0.8)]),
    ("<lora:bold>a cat", "a cat", [("bold", 1.0)]),  # no weight: AUTOMATIC1111's 1.0
    ("<lora:a:1>, x, <lora:b_2-v1.5:-0.5> y", ", x,  y", [("a", 1.0), ("b_2-v1.5", -0.5)]),  # several, any order
    ("<lyco:loha_style:0.3> z", " z", [("loha_style", 0.3)]),  # AUTOMATIC1111's LyCORIS alias
    ("no tags (but:1.2) [brackets]", "no tags (but:1.2) [brackets]", []),
    ("<lora:x:1e-1>", "", [("x", 0.1)]),
    ("a < lora:x:1> b", "a < lora:x:1> b", []),  # not a tag: the kind must follow '<' directly
])
def test_split_lora_tags(prompt, text, tags):
    stripped, found = split_lora_tags(prompt)
    assert stripped == text
    assert [(t.name, t.weight) for t in found] == tags


@pytest.mark.parametrize("prompt, message", [
    ("<lora:x:strong>", "not a finite number"),
    ("<lora:x:nan>", "not a finite number"),
    ("<lora:x:inf>", "not a finite number"),
    ("<lora:x:1:0.5>", "separate text-encoder / UNet weights"),
    ("<lora:x:te=1>", "separate text-encoder / UNet weights"),
    ("<hypernet:h:1>", "<hypernet:...> tags are not supported"),
    ("<lora: :1>", "no LoRA name"),
])
def test_tags_this_package_does_not_apply_are_refused_in_one_line(prompt, message):
    with pytest.raises(SettingsError, match=message) as info:
        split_lora_tags(prompt)
    assert info.value.option == "prompt" and "\n" not in str(info.value)


def test_the_folder_finds_each_suffix_and_lists_what_it_has(tmp_path):
    for name in ("a.safetensors", "sub/b.pt", "c.ckpt", "notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert find_lora("b", tmp_path) == tmp_path / "sub" / "b.pt"
    with pytest.raises(SettingsError, match=r"<lora:d>: no d.safetensors.*it has: a, b, c\)") as info:
        find_lora("d", tmp_path)
    assert info.value.option == "lora_dir"


def test_tags_of_prompts_and_negative_prompts_each_lora_once(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"x")
    (tmp_path / "b.safetensors").write_bytes(b"x")
    prompts, negatives, loras = prompt_loras(["p <lora:a:0.5>", "p <lora:a:0.5>"], ["n <lora:b>", "n <lora:b>"], tmp_path)
    assert (prompts, negatives) == (["p ", "p "], ["n ", "n "])
    assert loras == [(tmp_path / "a.safetensors", 0.5), (tmp_path / "b.safetensors", 1.0)]
    with pytest.raises(SettingsError, match="two weights"):
        prompt_loras(["<lora:a:0.5>", "<lora:a:0.6>"], [""], tmp_path)
    with pytest.raises(SettingsError, match="no LoRA folder") as info:
        prompt_loras(["<lora:a>"], [""], None)
    assert info.value.option == "lora_dir"


def test_plain_syntax_keeps_a_tag_as_text(tmp_path):
    plain = Conditioning("a cat <lora:missing:1>", prompt_syntax="plain")  # no folder needed: it is text
    assert plain.loras() == (["a cat <lora:missing:1>"], [""], [])
    with pytest.raises(SettingsError, match="no LoRA folder"):  # checked when the settings are made
        Conditioning("a cat <lora:missing:1>", prompt_syntax="a1111")
    with pytest.raises(SettingsError, match="it has: no LoRA files"):
        Conditioning("a cat <lora:missing:1>", prompt_syntax="a1111", lora_dir=tmp_path)
    with pytest.raises(SettingsError, match="plain syntax reads tags as text") as info:  # a folder shows the intent
        Conditioning("a cat <lora:missing:1>", prompt_syntax="plain", lora_dir=tmp_path)
    assert info.value.option == "prompt_syntax"


# -- one generation --------------------------------------------------------------------------------

SIZE = 32
FAST = dict(steps=4, height=SIZE, width=SIZE, seed=7, output="array")


@pytest.fixture
def pair(tiny):
    from diffusers import StableDiffusionPipeline

    folder = tiny("sd1")[0]
    return (StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32),
            StableDiffusion.from_pretrained(folder, torch_dtype=torch.float32))


def weights(sd) -> dict:
    return {k: v.clone() for k, v in sd.state_dict().items()}


def addnet_hash(path) -> str:
    """AUTOMATIC1111 / kohya's LoRA hash of a safetensors file: sha256 of the bytes after the header."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()


def test_a_tag_merges_its_lora_for_one_generation_only(pair, tmp_path):
    pipe, sd = pair
    save_file(kohya_lora(pipe, seed=2), tmp_path / "style.safetensors")
    before = weights(sd)

    tagged = sd.txt2img("the cat <lora:style:0.7>", negative_prompt="hat", prompt_syntax="a1111",
                        lora_dir=tmp_path, **FAST)
    after = weights(sd)
    assert all(torch.equal(after[k], before[k]) for k in before) and sd.applied_loras == ()

    sd.load_lora(tmp_path / "style.safetensors", scale=0.7)
    merged = sd.txt2img("the cat ", negative_prompt="hat", prompt_syntax="a1111", **FAST)
    sd.unload_loras()
    untouched = sd.txt2img("the cat ", negative_prompt="hat", prompt_syntax="a1111", **FAST)
    assert np.array_equal(tagged.arrays, merged.arrays)
    assert np.abs(tagged.arrays - untouched.arrays).max() > 1e-3  # the LoRA did change the picture

    params = parse_parameters(tagged.infotext(0))
    assert params["prompt"] == "the cat <lora:style:0.7>"  # as typed
    assert params["Lora hashes"] == f"style: {addnet_hash(tmp_path / 'style.safetensors')[:12]}"
    assert '"style: ' in tagged.infotext(0)  # quoted, as AUTOMATIC1111 writes it


def test_a_tag_in_the_negative_prompt_is_applied_and_removed(pair, tmp_path):
    pipe, sd = pair
    save_file(kohya_lora(pipe, seed=2), tmp_path / "style.safetensors")
    tagged = sd.txt2img("the cat", negative_prompt="hat <lora:style>", prompt_syntax="a1111", lora_dir=tmp_path,
                        **FAST)
    sd.load_lora(tmp_path / "style.safetensors")
    merged = sd.txt2img("the cat", negative_prompt="hat ", prompt_syntax="a1111", **FAST)
    sd.unload_loras()
    assert np.array_equal(tagged.arrays, merged.arrays)
    assert parse_parameters(tagged.infotext(0))["negative_prompt"] == "hat <lora:style>"


def test_tags_are_taken_out_even_when_the_generation_fails_and_earlier_loras_stay(pair, tmp_path):
    pipe, sd = pair
    save_file(kohya_lora(pipe, seed=2), tmp_path / "style.safetensors")
    save_file(kohya_lora(pipe, seed=3), tmp_path / "kept.safetensors")
    sd.load_lora(tmp_path / "kept.safetensors", scale=0.4)
    with_kept = weights(sd)

    def stop(i, t, x, pred_x0):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sd.txt2img("<lora:style:2> the cat", prompt_syntax="a1111", lora_dir=tmp_path, callback=stop, **FAST)
    now = weights(sd)
    assert all(torch.equal(now[k], with_kept[k]) for k in with_kept)
    assert [a.name for a in sd.applied_loras] == ["kept"]
    result = sd.txt2img("<lora:style:2> the cat", prompt_syntax="a1111", lora_dir=tmp_path, **FAST)
    assert parse_parameters(result.infotext(0))["Lora hashes"].startswith("kept: ")  # both named, in order
    assert ", style: " in parse_parameters(result.infotext(0))["Lora hashes"]
    sd.unload_loras()


def test_a_bad_lora_file_named_by_a_tag_changes_nothing(pair, tmp_path):
    pipe, sd = pair
    save_file(kohya_lora(pipe, seed=2), tmp_path / "good.safetensors")
    save_file({"lora_unet_nowhere.lora_down.weight": torch.zeros(2, 4), "lora_unet_nowhere.lora_up.weight":
               torch.zeros(4, 2)}, tmp_path / "bad.safetensors")
    before = weights(sd)
    from diffusion_notes.errors import CheckpointError
    with pytest.raises(CheckpointError, match="lora_unet_nowhere"):
        sd.txt2img("<lora:good> <lora:bad> x", prompt_syntax="a1111", lora_dir=tmp_path, **FAST)
    now = weights(sd)
    assert all(torch.equal(now[k], before[k]) for k in before) and sd.applied_loras == ()


def test_ti_hashes_name_the_embeddings_a_prompt_uses(pair, tmp_path):
    _, sd = pair
    path = tmp_path / "mystyle.pt"
    torch.save({"string_to_param": {"*": torch.randn(2, 64)}, "name": "mystyle", "step": 1}, path)
    sd.load_textual_inversion(path)
    used = sd.txt2img("a mystyle cat", **FAST)
    unused = sd.txt2img("a cat", **FAST)
    assert parse_parameters(used.infotext(0))["TI hashes"] == f"mystyle: {hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    assert "TI hashes" not in parse_parameters(unused.infotext(0))

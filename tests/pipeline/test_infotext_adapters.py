"""The PNG ``parameters`` fields of the adapters, in AUTOMATIC1111's layout, written and read back.

AUTOMATIC1111 (``modules/infotext_utils.py``) writes a value holding ``,``, ``:`` or a line break as a JSON
string, which is how ``Lora hashes: "name: hash, name2: hash2"`` appears in its PNGs, and reads the last
line with ``re_param_code``; the expected texts below are that format written out by hand.
"""

from __future__ import annotations

from types import SimpleNamespace

from diffusion_notes.infotext import adapter_fields, format_parameters, parse_parameters


def test_lora_and_ti_hashes_are_quoted_as_automatic1111_writes_them_and_read_back():
    loras = [SimpleNamespace(name="bold, strokes", short_hash="0123456789ab"),
             SimpleNamespace(name="thin:v2", short_hash="ba9876543210")]
    fields = {"steps": 20, "seed": 1} | adapter_fields(loras, [("mystyle", "aabbccddeeff")])
    text = format_parameters("a cat <lora:thin:v2:0.5>", "blurry", **fields)
    assert text.splitlines()[-1] == ('Steps: 20, Seed: 1, Lora hashes: "bold strokes: 0123456789ab, thinv2: '
                                     'ba9876543210", TI hashes: "mystyle: aabbccddeeff"')
    back = parse_parameters(text)
    assert back == {"prompt": "a cat <lora:thin:v2:0.5>", "negative_prompt": "blurry", "Steps": "20", "Seed": "1",
                    "Lora hashes": "bold strokes: 0123456789ab, thinv2: ba9876543210",
                    "TI hashes": "mystyle: aabbccddeeff"}


def test_no_adapters_no_fields_and_plain_values_stay_unquoted():
    assert adapter_fields([], []) == {"lora_hashes": None, "ti_hashes": None}
    text = format_parameters("p", steps=4, sampler="DPM++ 2M Karras", size="32x32", vae="vae-ft-mse.safetensors")
    assert text == "p\nSteps: 4, Sampler: DPM++ 2M Karras, Size: 32x32, VAE: vae-ft-mse.safetensors"
    assert parse_parameters(text)["VAE"] == "vae-ft-mse.safetensors"

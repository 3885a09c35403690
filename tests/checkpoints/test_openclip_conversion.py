"""OpenCLIP <-> transformers text-tower conversion, checked against an open_clip forward pass written here."""

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from diffusion_notes.checkpoints import (
    CheckpointError,
    openclip_text_config,
    openclip_to_transformers,
    transformers_to_openclip,
)

VOCAB, EOS, BOS, LENGTH, HEADS = 100, 99, 98, 12, 4
SD2_PREFIX = "cond_stage_model.model."
SDXL_PREFIX = "conditioner.embedders.1.model."


def _tiny_model(layers=3):
    config = CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        max_position_embeddings=LENGTH,
        projection_dim=16,
        hidden_act="gelu",
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    model = CLIPTextModelWithProjection(config).double().eval()
    # Random LayerNorm weights and biases too: at their init values (1, 0) a swapped mapping would pass.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return model


def _token_ids():
    # <start> words <end> then "!" (id 0) padding, as SD 2.x / SDXL's OpenCLIP tokenizer pads.
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(2, LENGTH, dtype=torch.long)
    for row, n_words in enumerate((4, 9)):
        ids[row, 0] = BOS
        ids[row, 1 : 1 + n_words] = torch.randint(1, BOS, (n_words,), generator=g)
        ids[row, 1 + n_words] = EOS
    return ids


def _openclip_encode(w, ids, num_layers=None):
    """open_clip ``TextTransformer`` / SD2 ``FrozenOpenCLIPEmbedder`` maths on open_clip-layout weights.

    Returns the residual stream before each block and after the last (``states``), ln_final of the
    last computed layer, and the pooled projection ``ln_final(x)[argmax ids] @ text_projection``.
    """
    if num_layers is None:
        num_layers = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("transformer."))
    x = w["token_embedding.weight"][ids] + w["positional_embedding"][: ids.shape[1]]
    width = x.shape[-1]
    causal = torch.full((ids.shape[1],) * 2, float("-inf"), dtype=x.dtype).triu(1)
    states = [x]
    for i in range(num_layers):
        b = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), w[b + "ln_1.weight"], w[b + "ln_1.bias"]).transpose(0, 1)  # (L, N, E)
        attn, _ = F.multi_head_attention_forward(
            h, h, h, width, HEADS,
            w[b + "attn.in_proj_weight"], w[b + "attn.in_proj_bias"],
            None, None, False, 0.0,
            w[b + "attn.out_proj.weight"], w[b + "attn.out_proj.bias"],
            training=False, need_weights=False, attn_mask=causal,
        )  # fmt: skip
        x = x + attn.transpose(0, 1)
        h = F.layer_norm(x, (width,), w[b + "ln_2.weight"], w[b + "ln_2.bias"])
        x = x + F.linear(F.gelu(F.linear(h, w[b + "mlp.c_fc.weight"], w[b + "mlp.c_fc.bias"])),
                         w[b + "mlp.c_proj.weight"], w[b + "mlp.c_proj.bias"])  # fmt: skip
        states.append(x)
    final = F.layer_norm(x, (width,), w["ln_final.weight"], w["ln_final.bias"])
    pooled = final[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ w["text_projection"]
    return states, final, pooled


def test_converted_weights_reproduce_transformers_outputs():
    model = _tiny_model()
    openclip = transformers_to_openclip(model.state_dict())
    ids = _token_ids()
    states, final, pooled = _openclip_encode(openclip, ids)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    assert len(out.hidden_states) == len(states)
    for ours, theirs in zip(states, out.hidden_states):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(final, out.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, out.text_embeds, atol=1e-5, rtol=0)


def test_sd2_penultimate_layer_two_ways():
    # SD2 conditions on ln_final(penultimate); diffusers stores 23 of 24 layers for it. Both routes agree.
    full = _tiny_model(layers=3)
    ids = _token_ids()
    _, sd2_context, _ = _openclip_encode(transformers_to_openclip(full.state_dict()), ids, num_layers=2)
    with torch.no_grad():
        hidden = full(input_ids=ids, output_hidden_states=True).hidden_states[-2]
        via_full = full.text_model.final_layer_norm(hidden)
        truncated = CLIPTextModelWithProjection(CLIPTextConfig(**{**full.config.to_dict(), "num_hidden_layers": 2}))
        kept = {k: v for k, v in full.state_dict().items() if ".layers.2." not in k}
        truncated.double().load_state_dict(kept, strict=True)
        via_truncated = truncated(input_ids=ids).last_hidden_state
    torch.testing.assert_close(via_full, sd2_context, atol=1e-5, rtol=0)
    torch.testing.assert_close(via_truncated, sd2_context, atol=1e-5, rtol=0)


def test_round_trip_transformers_openclip_transformers_is_exact():
    original = _tiny_model().state_dict()
    back = openclip_to_transformers(transformers_to_openclip(original, prefix=SD2_PREFIX), prefix=SD2_PREFIX)
    assert back.keys() == original.keys()
    for key in original:
        assert torch.equal(back[key], original[key]), key


def _sd2_style_checkpoint(model):
    """The text tower inside a full single-file checkpoint, with the neighbours a real one has."""
    checkpoint = transformers_to_openclip(model.state_dict(), prefix=SD2_PREFIX)
    checkpoint[SD2_PREFIX + "logit_scale"] = torch.tensor(4.6)
    checkpoint[SD2_PREFIX + "visual.conv1.weight"] = torch.zeros(3)
    checkpoint[SD2_PREFIX + "attn_mask"] = torch.zeros(LENGTH, LENGTH)
    checkpoint["model.diffusion_model.out.0.weight"] = torch.zeros(2)
    return checkpoint


def test_openclip_side_round_trip_and_ignored_keys():
    checkpoint = _sd2_style_checkpoint(_tiny_model())
    converted = openclip_to_transformers(checkpoint, prefix=SD2_PREFIX)
    fresh = CLIPTextModelWithProjection(_tiny_model().config).double()
    fresh.load_state_dict(converted, strict=True)  # every weight present, nothing extra
    back = transformers_to_openclip(converted, prefix=SD2_PREFIX)
    text_tower = {k: v for k, v in checkpoint.items() if k.startswith(SD2_PREFIX) and "visual" not in k
                  and not k.endswith(("logit_scale", "attn_mask"))}  # fmt: skip
    assert back.keys() == text_tower.keys()
    assert all(torch.equal(back[k], text_tower[k]) for k in back)


def test_matches_diffusers_convert_open_clip_checkpoint():
    single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
    model = _tiny_model()
    # SDXL's prefix: with SD2's, diffusers also drops layer 23 and text_projection by name.
    checkpoint = transformers_to_openclip(model.state_dict(), prefix=SDXL_PREFIX)
    theirs = single_file_utils.convert_open_clip_checkpoint(model, checkpoint, prefix=SDXL_PREFIX)
    ours = openclip_to_transformers(checkpoint, prefix=SDXL_PREFIX)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_unknown_keys_are_errors_not_silently_dropped():
    checkpoint = _sd2_style_checkpoint(_tiny_model(layers=1))
    checkpoint[SD2_PREFIX + "transformer.resblocks.0.attn.q_norm.weight"] = torch.ones(8)
    with pytest.raises(CheckpointError, match="resblocks.0.attn.q_norm.weight: not an OpenCLIP text-tower key"):
        openclip_to_transformers(checkpoint, prefix=SD2_PREFIX)
    with pytest.raises(CheckpointError, match="no OpenCLIP text-tower weights under the prefix 'wrong.'"):
        openclip_to_transformers(checkpoint, prefix="wrong.")
    hf = dict(_tiny_model(layers=1).state_dict())
    del hf["text_model.encoder.layers.0.self_attn.k_proj.bias"]
    with pytest.raises(CheckpointError, match=r"layer 0: self_attn bias is missing \['k'\]"):
        transformers_to_openclip(hf)
    with pytest.raises(CheckpointError, match="no transformers CLIP text-model weights"):
        transformers_to_openclip({"vision_model.embeddings.patch_embedding.weight": torch.zeros(1)})


def _meta_openclip(width, layers, mlp, projection, vocab=49408, length=77):
    meta = {"device": "meta"}
    weights = {
        "token_embedding.weight": torch.empty(vocab, width, **meta),
        "positional_embedding": torch.empty(length, width, **meta),
        "text_projection": torch.empty(width, projection, **meta),
        "logit_scale": torch.empty((), **meta),
    }
    for i in range(layers):
        weights[f"transformer.resblocks.{i}.mlp.c_fc.weight"] = torch.empty(mlp, width, **meta)
    return weights


@pytest.mark.parametrize(
    "name, width, layers, heads, mlp, projection",
    [("ViT-H-14 (SD 2.x)", 1024, 24, 16, 4096, 1024), ("ViT-bigG-14 (SDXL)", 1280, 32, 20, 5120, 1280)],
)
def test_text_config_of_released_towers(name, width, layers, heads, mlp, projection):
    checkpoint = {SD2_PREFIX + k: v for k, v in _meta_openclip(width, layers, mlp, projection).items()}
    config = openclip_text_config(checkpoint, prefix=SD2_PREFIX)
    assert config == {
        "vocab_size": 49408,
        "hidden_size": width,
        "intermediate_size": mlp,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 77,
        "projection_dim": projection,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
    }, name


def test_text_config_builds_a_model_that_takes_the_converted_weights():
    config = CLIPTextConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=LENGTH, projection_dim=48)  # fmt: skip
    source = transformers_to_openclip(CLIPTextModelWithProjection(config).state_dict())
    inferred = CLIPTextConfig(**openclip_text_config(source))
    CLIPTextModelWithProjection(inferred).load_state_dict(openclip_to_transformers(source), strict=True)
    assert (inferred.num_attention_heads, inferred.projection_dim, inferred.eos_token_id) == (2, 48, VOCAB - 1)


def test_text_config_refuses_widths_without_64_wide_heads():
    with pytest.raises(CheckpointError, match="not a multiple of 64"):
        openclip_text_config(_meta_openclip(width=96, layers=1, mlp=384, projection=96))

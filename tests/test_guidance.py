"""Classifier-free guidance: the formula, CompVis's batching, dict conditioning."""

import torch

from diffusion_notes.guidance import classifier_free_guidance, guided_eps_model


def _model(calls):
    def model(x, t, c):
        calls.append(x.shape[0])
        ctx = c["context"] if isinstance(c, dict) else c
        return torch.tanh(x * ctx.mean(dim=(1, 2))[:, None] + t[:, None].to(x.dtype) / 1000)

    return model


def test_formula_endpoints():
    u, c = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(classifier_free_guidance(u, c, 0.0), u)
    torch.testing.assert_close(classifier_free_guidance(u, c, 1.0), c)
    torch.testing.assert_close(classifier_free_guidance(u, c, 7.5), u + 7.5 * (c - u))


def test_one_batched_call_equals_two_separate_calls():
    calls = []
    model = _model(calls)
    x, t = torch.randn(3, 2), torch.tensor([10, 500, 900])
    c, uc = torch.randn(3, 77, 8), torch.zeros(3, 77, 8)
    guided = guided_eps_model(model, c, uc, 7.5)(x, t)
    assert calls == [6], "uncond and cond must share one model call of batch 2B"
    expected = model(x, t, uc) + 7.5 * (model(x, t, c) - model(x, t, uc))
    torch.testing.assert_close(guided, expected)


def test_scale_one_or_no_uncond_calls_the_model_once_unbatched():
    calls = []
    model = _model(calls)
    x, t, c = torch.randn(2, 2), torch.tensor([1, 2]), torch.randn(2, 77, 8)
    guided_eps_model(model, c, torch.zeros_like(c), 1.0)(x, t)
    guided_eps_model(model, c, None, 5.0)(x, t)
    assert calls == [2, 2]


def test_dict_conditioning_is_batched_per_key():
    calls = []
    model = _model(calls)
    x, t = torch.randn(2, 2), torch.tensor([3, 4])
    c = {"context": torch.randn(2, 77, 8), "y": torch.randn(2, 5)}
    uc = {"context": torch.zeros(2, 77, 8), "y": torch.zeros(2, 5)}
    out = guided_eps_model(model, c, uc, 3.0)(x, t)
    expected = model(x, t, uc) + 3.0 * (model(x, t, c) - model(x, t, uc))
    torch.testing.assert_close(out, expected)

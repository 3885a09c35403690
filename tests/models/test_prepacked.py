"""models.prepacked: oneDNN-prepacked convolutions against torch's own nn.Conv2d on the same weights."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusion_notes.models.prepacked import (PrepackedConv2d, prepack_convolutions, prepacking_available,
                                              unpack_convolutions)

# A torch built without oneDNN (some non-x86 builds) has nothing to prepack: prepack_convolutions is a no-op there
# and the loaders' models run plain nn.Conv2d, which the diffusers-equivalence tests cover.
pytestmark = pytest.mark.skipif(not prepacking_available(), reason="this torch has no oneDNN")

CASES = [  # (in, out, kernel, stride, padding, groups, side)
    (8, 16, 3, 1, 1, 1, 9), (16, 16, 3, 2, 1, 1, 8), (32, 8, 1, 1, 0, 1, 5), (16, 32, 3, 1, 1, 4, 6),
    (4, 320, 3, 1, 1, 1, 8),
]


def _conv(cin, cout, k, stride, pad, groups, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups).eval().requires_grad_(False)


@pytest.mark.parametrize("case", CASES)
def test_prepacked_equals_conv2d(case):
    cin, cout, k, stride, pad, groups, side = case
    conv = _conv(cin, cout, k, stride, pad, groups)
    packed = PrepackedConv2d(copy.deepcopy(conv))
    x = torch.randn(2, cin, side, side, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours, theirs = packed(x), conv(x)
        exact = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), conv.stride, conv.padding,
                         conv.dilation, conv.groups)
    assert packed._packed is not None and packed._plain is None  # it did run prepacked
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)  # another summation order: rounding only
    # no further from the float64 result than torch's own float32 convolution, give or take rounding
    assert (ours.double() - exact).abs().max() <= 4 * (theirs.double() - exact).abs().max() + 1e-7
    assert (ours.double() - theirs.double()).norm() / theirs.double().norm() < 1e-6


def test_new_input_shape_is_prepacked_again_and_weight_is_unchanged():
    conv = _conv(8, 16, 3, 1, 1, 1)
    packed = PrepackedConv2d(copy.deepcopy(conv))
    with torch.no_grad():
        for shape in [(2, 8, 16, 16), (1, 8, 4, 4), (3, 8, 7, 5), (2, 8, 16, 16)]:
            x = torch.randn(*shape)
            torch.testing.assert_close(packed(x), conv(x), rtol=1e-5, atol=1e-5)
            assert packed._packed_for == shape
    assert torch.equal(packed.weight, conv.weight)  # reordering back and forth loses nothing


def test_state_dict_load_and_to_behave_like_conv2d():
    conv = _conv(8, 16, 3, 1, 1, 1)
    packed = PrepackedConv2d(copy.deepcopy(conv))
    with torch.no_grad():
        packed(torch.randn(1, 8, 6, 6))  # now held prepacked
    state = packed.state_dict()
    assert list(state) == list(conv.state_dict())
    assert all(torch.equal(state[k], v) for k, v in conv.state_dict().items())

    other = _conv(8, 16, 3, 1, 1, 1, seed=5)
    packed.load_state_dict(other.state_dict())
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), other(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="size mismatch"):
        packed.load_state_dict(_conv(8, 4, 3, 1, 1, 1).state_dict())

    packed.to(torch.float64)  # fp64: not prepackable, runs F.conv2d, exactly torch's
    with torch.no_grad():
        assert packed.weight.dtype == torch.float64
        assert torch.equal(packed(x.double()), other.double()(x.double()))


def test_deepcopy_and_torch_save_hold_the_plain_weight(tmp_path):
    conv = _conv(8, 16, 3, 1, 1, 1)
    packed = PrepackedConv2d(copy.deepcopy(conv))
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        y = packed(x)
        twin = copy.deepcopy(packed)
        assert torch.equal(twin.weight, conv.weight) and torch.equal(twin(x), y)
        torch.save(packed, tmp_path / "conv.pt")
        loaded = torch.load(tmp_path / "conv.pt", weights_only=False)
        assert torch.equal(loaded(x), y)
    assert packed._packed is not None  # the original stays prepacked


def test_a_reorder_that_fails_leaves_a_plain_convolution(monkeypatch):
    def refuse(*args):
        raise RuntimeError("this oneDNN cannot reorder that weight")

    conv = _conv(8, 16, 3, 1, 1, 1)
    packed = PrepackedConv2d(copy.deepcopy(conv))
    monkeypatch.setattr(torch._C._nn, "mkldnn_reorder_conv2d_weight", refuse)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert torch.equal(packed(x), conv(x)) and torch.equal(packed(x), conv(x))  # plain F.conv2d, every time
    assert packed._refused and packed._packed is None and torch.equal(packed.weight, conv.weight)


def test_gradients_reach_the_input_but_training_is_refused():
    conv = _conv(8, 16, 3, 1, 1, 1)
    packed = PrepackedConv2d(copy.deepcopy(conv)).eval()
    x = torch.randn(1, 8, 5, 5, requires_grad=True)
    packed(x).square().sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    conv(x_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="unpack_convolutions"):
        packed.train()(x)


def test_prepack_and_unpack_a_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.SiLU(), nn.Sequential(nn.Conv2d(8, 8, 1)),
                        nn.Conv2d(8, 8, 3, padding="same"), nn.Conv2d(8, 4, 3, padding=1, padding_mode="reflect"))
    ref = copy.deepcopy(net).eval()
    net.eval()
    prepack_convolutions(net)
    kinds = [type(m).__name__ for m in (net[0], net[2][0], net[3], net[4])]
    assert kinds == ["PrepackedConv2d", "PrepackedConv2d", "Conv2d", "Conv2d"]  # "same" / reflect stay plain
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), rtol=1e-5, atol=1e-5)
    unpack_convolutions(net)
    assert all(type(m) is nn.Conv2d for m in net.modules() if isinstance(m, nn.Conv2d) or "Conv" in type(m).__name__)
    assert all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values()))


def test_each_reorder_hands_freed_heap_back_to_the_system(monkeypatch):
    """Prepacking frees the plain weight; glibc keeps small freed blocks in its heap unless trimmed. Every reorder
    must call malloc_trim(0) (the RSS saving itself is measured in docs/benchmarks.md, benchmark 7, not here)."""
    import platform

    from diffusion_notes.models import prepacked

    if platform.libc_ver()[0] == "glibc":
        assert prepacked._malloc_trim() is not None  # found in the running C library
    calls = []
    monkeypatch.setattr(prepacked, "_malloc_trim", lambda: calls.append)
    packed = PrepackedConv2d(_conv(8, 16, 3, 1, 1, 1))
    with torch.inference_mode():
        packed(torch.randn(1, 8, 6, 6))
        packed(torch.randn(1, 8, 6, 6))  # same shape: no new reorder, no trim
        assert calls == [0]
        packed(torch.randn(1, 8, 7, 7))  # a new shape: reordered again, trimmed again
    assert calls == [0, 0]
    monkeypatch.setattr(prepacked, "_malloc_trim", lambda: None)  # no malloc_trim (musl, macOS): a no-op
    prepacked.return_freed_memory()

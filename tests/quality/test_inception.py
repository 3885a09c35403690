"""FID's Inception-v3 on random weights saved in the published files' key layout.

Oracles: torch-fidelity's ``FeatureExtractorInceptionV3`` (an independent implementation; test-only, skipped when it
is not installed: ``pip install --no-deps torch-fidelity``, since its dependencies pull torchvision), and brute-force
float64 numpy transcriptions of the pieces (the convolution + BatchNorm + ReLU unit, TensorFlow's average pool,
bilinear resizing with half-pixel centres, whole A and E blocks). The key layout comes from
``data/fid_inception_keys.txt``, made from torch-fidelity's module, not from ours.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusion_notes.errors import CheckpointError
from diffusion_notes.quality import inception
from diffusion_notes.quality.inception import (FEATURES, PYTORCH_FID_FILE, BasicConv2d, FIDInceptionA, FIDInceptionE_1,
                                               FIDInceptionE_2, FIDInceptionV3, _tf_average_pool, fid, inception_features,
                                               load_fid_inception, resize_to_input, to_inception_input)

KEYS = Path(__file__).parent / "data" / "fid_inception_keys.txt"


def published_layout() -> dict[str, tuple[int, ...]]:
    lines = [line.split() for line in KEYS.read_text().splitlines() if line and not line.startswith("#")]
    return {key: tuple(int(n) for n in shape.split(",")) for key, shape in lines}


def random_weights(seed: int = 0, counters: bool = False) -> dict[str, torch.Tensor]:
    """Random float32 tensors with the published names and shapes; He-scaled convolutions and BatchNorm statistics
    away from (0, 1), so that activations stay O(1) through the 94 layers and BatchNorm's epsilon matters."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in published_layout().items():
        if key.endswith("conv.weight"):
            tensor = torch.randn(shape, generator=g) * math.sqrt(2 / math.prod(shape[1:]))
        elif key.endswith("bn.weight"):
            tensor = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_var"):
            tensor = torch.rand(shape, generator=g) * 1.5 + 0.5
        else:  # bn.bias, running_mean, fc
            tensor = torch.randn(shape, generator=g) * 0.1
        state[key] = tensor
        if counters and key.endswith("running_var"):  # what torch.save(model.state_dict()) of a torchvision model holds
            state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> tuple[Path, dict]:
    state = random_weights(0)
    path = tmp_path_factory.mktemp("inception") / PYTORCH_FID_FILE
    torch.save(state, path)
    return path, state


def torch_fidelity_inception():
    """torch-fidelity's feature_extractor_inceptionv3 module, or None. Its package ``__init__`` imports every feature
    extractor, some of which import torchvision (not installable here); this file imports only torch and three
    small modules of the package, so it is loaded without running the ``__init__``."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        return None
    if "torch_fidelity" in sys.modules:
        return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = package
    try:
        return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    finally:
        for name in [n for n in sys.modules if n == "torch_fidelity" or n.startswith("torch_fidelity.")]:
            del sys.modules[name]


# ---- the weights file ------------------------------------------------------------------------------------------

def test_module_names_and_shapes_are_the_published_layout():
    ours = {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = {k: v for k, v in published_layout().items() if not k.startswith("fc.")}
    assert ours == theirs and len(ours) == 470


@pytest.mark.parametrize("counters", [False, True], ids=["torch-fidelity-style", "with-num_batches_tracked"])
def test_loads_the_file_tensor_for_tensor(tmp_path, counters):
    state = random_weights(1, counters=counters)
    torch.save(state, tmp_path / "w.pth")
    model = load_fid_inception(tmp_path / "w.pth")
    loaded = model.state_dict()
    for key, tensor in state.items():
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded[key], tensor), key
    assert not model.training and not any(p.requires_grad for p in model.parameters())


# ---- against torch-fidelity ------------------------------------------------------------------------------------

def test_features_equal_torch_fidelity_on_the_same_file(weights_file, monkeypatch):
    oracle = torch_fidelity_inception()
    if oracle is None:
        pytest.skip("torch-fidelity not installed (test-only oracle: pip install --no-deps torch-fidelity)")
    path, _ = weights_file
    torch.manual_seed(0)
    extractor = oracle.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path=str(path))  # loads strictly
    u = torch.randint(0, 256, (2, 3, 299, 299), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.inference_mode():
        (expected,) = extractor(u)
    # At 299x299 neither resizes; torch-fidelity maps u to (u - 128) / 128 = u / 128 - 1, exact in float32, so the
    # same pixels in our convention ([-1, 1] tensors) are u / 128 - 1.
    x = u.float() / 128 - 1
    expected = expected.double().numpy()
    scale = np.abs(expected).max()
    assert scale > 0.1 and expected.std() > 0.01  # not a degenerate comparison

    def relative_gap(model) -> float:
        ours = inception_features(x, model)
        assert ours.shape == (2, FEATURES) == expected.shape
        return np.abs(ours - expected).max() / scale

    assert relative_gap(path) <= 1e-5
    # The comparison sees each TensorFlow detail: break one at a time, the gap is > 100x the tolerance.
    model = load_fid_inception(path)
    for bn in [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
        bn.eps = 1e-5  # torch's default instead of TensorFlow's 0.001
    assert relative_gap(model) > 1e-3
    model = load_fid_inception(path)
    model.Mixed_7c.pool = model.Mixed_7b.pool  # an average pool in Mixed_7c, as in the paper and torchvision
    assert relative_gap(model) > 1e-3
    with monkeypatch.context() as patch:  # average pools that count the zero padding, as torchvision's blocks do
        patch.setattr(inception, "_tf_average_pool", lambda t: F.avg_pool2d(t, 3, 1, 1, count_include_pad=True))
        assert relative_gap(load_fid_inception(path)) > 1e-3


# ---- brute-force transcriptions --------------------------------------------------------------------------------

def np_conv(x, w, stride=(1, 1), padding=(0, 0)):
    """Cross-correlation of x (C, H, W) with w (O, C, kh, kw), zero padding, as a sum over kernel offsets."""
    (sh, sw), (ph, pw) = stride, padding
    x = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
    o, _, kh, kw = w.shape
    h_out, w_out = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    out = np.zeros((o, h_out, w_out))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + sh * (h_out - 1) + 1:sh, j:j + sw * (w_out - 1) + 1:sw]
            out += np.einsum("oc,chw->ohw", w[:, :, i, j], patch)
    return out


def np_unit(x, unit: BasicConv2d):
    """relu(gamma (conv(x) - mean) / sqrt(var + 0.001) + beta): TensorFlow's batch norm epsilon is 0.001."""
    conv, bn = unit.conv, unit.bn
    y = np_conv(x, conv.weight.double().numpy(), conv.stride, conv.padding)
    mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    gamma, beta = bn.weight.double().numpy(), bn.bias.double().numpy()
    y = (y - mean[:, None, None]) / np.sqrt(var[:, None, None] + 0.001) * gamma[:, None, None] + beta[:, None, None]
    return np.maximum(y, 0)


def np_pool3x3(x, reduce):
    """3x3 window, stride 1, 'SAME': ``reduce`` over the pixels of the window that lie inside the image."""
    c, h, w = x.shape
    out = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = reduce(x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].reshape(c, -1), axis=1)
    return out


def randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.01)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.3)
    return module.eval().double().requires_grad_(False)


def test_basic_conv_is_convolution_batchnorm_with_epsilon_0001_and_relu():
    unit = randomise(BasicConv2d(4, 6, (3, 1), stride=2, padding=(1, 0)), 0)
    x = np.random.default_rng(0).normal(size=(4, 9, 7))
    with torch.no_grad():
        ours = unit(torch.from_numpy(x)[None])[0].numpy()
    assert np.allclose(ours, np_unit(x, unit), rtol=1e-10, atol=1e-12)


def test_average_pool_divides_by_the_pixels_inside_the_image():
    x = np.random.default_rng(1).normal(size=(3, 5, 6))
    ours = _tf_average_pool(torch.from_numpy(x)[None])[0].numpy()
    assert np.allclose(ours[:, 0, 0], x[:, :2, :2].mean(axis=(1, 2)))  # a corner averages 4 pixels, not 9
    assert np.allclose(ours, np_pool3x3(x, np.mean), rtol=1e-10, atol=1e-12)


def test_inception_a_block_is_its_four_branches_concatenated():
    block = randomise(FIDInceptionA(8, pool_features=5), 2)
    x = np.random.default_rng(2).normal(size=(8, 6, 6))
    branches = [
        np_unit(x, block.branch1x1),
        np_unit(np_unit(x, block.branch5x5_1), block.branch5x5_2),
        np_unit(np_unit(np_unit(x, block.branch3x3dbl_1), block.branch3x3dbl_2), block.branch3x3dbl_3),
        np_unit(np_pool3x3(x, np.mean), block.branch_pool),
    ]
    with torch.no_grad():
        ours = block(torch.from_numpy(x)[None])[0].numpy()
    assert ours.shape[0] == 64 + 64 + 96 + 5
    assert np.allclose(ours, np.concatenate(branches), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("block_type, reduce", [(FIDInceptionE_1, np.mean), (FIDInceptionE_2, np.max)])
def test_inception_e_blocks_pool_by_average_then_by_max(block_type, reduce):
    block = randomise(block_type(6), 3)
    x = np.random.default_rng(3).normal(size=(6, 4, 5))
    a = np_unit(x, block.branch3x3_1)
    b = np_unit(np_unit(x, block.branch3x3dbl_1), block.branch3x3dbl_2)
    expected = np.concatenate([
        np_unit(x, block.branch1x1),
        np_unit(a, block.branch3x3_2a), np_unit(a, block.branch3x3_2b),
        np_unit(b, block.branch3x3dbl_3a), np_unit(b, block.branch3x3dbl_3b),
        np_unit(np_pool3x3(x, reduce), block.branch_pool),
    ])
    with torch.no_grad():
        ours = block(torch.from_numpy(x)[None])[0].numpy()
    assert ours.shape[0] == 320 + 2 * 384 + 2 * 384 + 192 == FEATURES
    assert np.allclose(ours, expected, rtol=1e-10, atol=1e-12)


def test_resize_is_bilinear_with_half_pixel_centres():
    """out[i] interpolates the input at (i + 1/2) * in/out - 1/2, clamped to the image, linearly per axis."""
    x = np.random.default_rng(4).normal(size=(5, 7))

    def weights_matrix(n_in):
        m = np.zeros((299, n_in))
        for i in range(299):
            s = min(max((i + 0.5) * n_in / 299 - 0.5, 0.0), n_in - 1)
            lo = int(np.floor(s))
            hi = min(lo + 1, n_in - 1)
            m[i, lo] += 1 - (s - lo)
            m[i, hi] += s - lo
        return m

    expected = weights_matrix(5) @ x @ weights_matrix(7).T
    ours = resize_to_input(torch.from_numpy(x)[None, None])[0, 0].numpy()
    assert ours.shape == (299, 299) and np.allclose(ours, expected, rtol=1e-10, atol=1e-12)


# ---- inputs, the whole network, FID ----------------------------------------------------------------------------

def test_input_conventions():
    u = np.random.default_rng(5).integers(0, 256, size=(2, 6, 6, 3), dtype=np.uint8)
    from_tensor = torch.from_numpy(u).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    assert torch.allclose(to_inception_input(u), from_tensor, atol=1e-6)
    assert torch.allclose(to_inception_input(u.astype(np.float32) / 255), from_tensor, atol=1e-6)
    grey = to_inception_input(u[..., :1])
    assert grey.shape == (2, 3, 6, 6) and torch.equal(grey[:, 0], grey[:, 2])
    assert to_inception_input(torch.full((1, 3, 2, 2), 3.0)).max() == 1
    with pytest.raises(ValueError, match="shape"):
        to_inception_input(torch.zeros(2, 4, 8, 8))


def test_features_of_small_images_and_fid(weights_file):
    """Digits-sized images are resized to 299 inside; (N, 2048) non-negative features (a mean of ReLUs). FID of two
    sets of 2 images has a closed form: each covariance is rank one, (f1 - f2)(f1 - f2)^T / 2 = u u^T, and
    Tr (u u^T w w^T)^1/2 = |u . w|, so FID = |mu_a - mu_b|^2 + |u|^2 + |w|^2 - 2 |u . w|."""
    path, _ = weights_file
    g = torch.Generator().manual_seed(6)
    a = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    b = a.flip(-1).roll(5, dims=-2)
    features = inception_features(torch.cat([a, b]), path, batch_size=3)
    assert features.shape == (4, FEATURES) and features.dtype == np.float64 and (features >= 0).all()
    fa, fb = features[:2], features[2:]
    u, w = (fa[0] - fa[1]) / np.sqrt(2), (fb[0] - fb[1]) / np.sqrt(2)
    mean_gap = fa.mean(0) - fb.mean(0)
    closed_form = mean_gap @ mean_gap + u @ u + w @ w - 2 * abs(u @ w)
    assert closed_form > 1e-3 * (u @ u + w @ w)  # the two sets differ
    assert fid(a, b, weights=path) == pytest.approx(closed_form, rel=1e-6)


# ---- errors a user can cause -----------------------------------------------------------------------------------

def test_a_missing_file_names_the_file_expected(tmp_path):
    with pytest.raises(CheckpointError) as err:
        fid(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), weights=tmp_path / "nope.pth")
    message = str(err.value)
    assert "nope.pth" in message and PYTORCH_FID_FILE in message and "\n" not in message


def test_bad_files_get_one_line_each(tmp_path, weights_file):
    _, state = weights_file
    cases = {
        "garbage.pth": b"this is not a checkpoint",
        "list.pth": [torch.zeros(1)],
        "short.pth": {k: v for k, v in state.items() if k != "Mixed_6b.branch7x7_2.conv.weight"},
        "aux.pth": {**state, "AuxLogits.conv0.conv.weight": torch.zeros(128, 768, 1, 1)},
        "shape.pth": {**state, "Mixed_7c.branch_pool.conv.weight": torch.zeros(192, 2048, 3, 3)},
    }
    expected = {"garbage.pth": "cannot be read", "list.pth": "holds a list",
                "short.pth": "1 tensors missing (first: Mixed_6b.branch7x7_2.conv.weight)",
                "aux.pth": "1 unexpected (first: AuxLogits.conv0.conv.weight)",
                "shape.pth": "Mixed_7c.branch_pool.conv.weight has shape (192, 2048, 3, 3)"}
    for name, content in cases.items():
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        else:
            torch.save(content, tmp_path / name)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "script.pt")  # the format of clean-fid's file
    expected["script.pt"] = "is a TorchScript archive"
    for name in expected:
        path = tmp_path / name
        with pytest.raises(CheckpointError) as err:
            load_fid_inception(path)
        message = str(err.value)
        assert expected[name] in message and name in message and PYTORCH_FID_FILE in message, message
        assert "\n" not in message

r"""FID proper: the Fréchet distance on the pool features of FID's Inception-v3, with weights the user supplies.

FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash
equilibrium", Eq. 6) is :func:`~.frechet.frechet_distance` between Gaussians fitted to the
2048 features of the last average pooling layer ("pool_3") of Inception-v3 (Szegedy et al. 2016,
"Rethinking the Inception architecture for computer vision", Fig. 5-7 and Table 1). Not any Inception-v3:
the numbers in papers come from TensorFlow's graph ``inception-2015-12-05``, which differs from torchvision's
ImageNet model in weights *and* in three details pytorch-fid patches (its ``FIDInceptionA/C/E_1/E_2``):

* the 3x3 average pools inside the A, C and first E blocks divide by the number of *real* pixels under the
  window at the border (TensorFlow's ``SAME`` pooling; torch's ``count_include_pad=False``), not by 9;
* the last block (``Mixed_7c``, :class:`FIDInceptionE_2`) pools its fourth branch with a 3x3 *max* pool,
  where the paper and torchvision's model use an average pool;
* the classifier has 1008 classes (``fc``, unused here: FID stops at the 2048 pool features).

The input is resized to 299x299 with bilinear interpolation (half-pixel centres, no antialiasing:
``F.interpolate(..., mode="bilinear", align_corners=False)``, pytorch-fid's ``resize_input``) and the network
reads pixels in [-1, 1] (pytorch-fid's ``normalize_input``: ``2x - 1`` of [0, 1] pixels).

**No weights ship with this package** and nothing is downloaded. :func:`load_fid_inception` reads a file the
user has, given by path:

* pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (released with pytorch-fid on GitHub, "fid_weights"),
  a state dict of torchvision's ``Inception3(num_classes=1008, aux_logits=False)`` with the patched blocks;
* torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (released with torch-fidelity v0.2.0;
  torchmetrics' FID uses it too), converted from the same TensorFlow graph with the *same key names*
  (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_var``, ..., ``fc.weight``), so no key
  mapping is needed; it lacks BatchNorm's ``num_batches_tracked`` counters, which are not read anyway.

torch-fidelity resizes with a TensorFlow-1.x-exact bilinear kernel and maps uint8 ``u`` to ``(u - 128) / 128``;
pytorch-fid (and this module) use torch's bilinear resize and ``u / 255 * 2 - 1``: on the same weights the two
give slightly different FIDs. ``tests/quality/test_inception.py`` checks this network against torch-fidelity's
(an independent implementation) on random weights saved in the published key layout, at 299x299 where neither
resizes and with inputs on which both scalings agree exactly.
"""

from __future__ import annotations

import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .frechet import frechet_distance_of_features

__all__ = ["INPUT_SIZE", "FEATURES", "PYTORCH_FID_FILE", "TORCH_FIDELITY_FILE", "BasicConv2d", "FIDInceptionA",
           "InceptionB", "FIDInceptionC", "InceptionD", "FIDInceptionE_1", "FIDInceptionE_2", "FIDInceptionV3",
           "resize_to_input", "load_fid_inception", "to_inception_input", "inception_features", "fid"]

#: Height = width of the network's input (Szegedy et al. 2016, Table 1).
INPUT_SIZE = 299
#: Dimension of the pool_3 features FID compares.
FEATURES = 2048
#: The weights file pytorch-fid downloads; ``6726825d``: torch hub's naming convention for the start of the file's
#: sha256 (neither pytorch-fid nor this module checks it).
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
#: torch-fidelity's (and torchmetrics') file of the same TensorFlow weights, with the same key names.
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"

_EXPECTED = f"pytorch-fid's {PYTORCH_FID_FILE} or torch-fidelity's {TORCH_FIDELITY_FILE} (see docs/quality.md)"


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (TensorFlow's epsilon 0.001, in inference mode), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_average_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 average pool, stride 1, ``SAME`` padding, dividing by the pixels inside the image (TensorFlow's)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """Mixed_5b/5c/5d (Szegedy et al. 2016, Fig. 5, with 5x5 kept as in the released graph), 35x35.

    Branches, concatenated in this order: 1x1 (64); 1x1 -> 5x5 (48 -> 64); 1x1 -> 3x3 -> 3x3 (64 -> 96 -> 96);
    TensorFlow average pool -> 1x1 (``pool_features``)."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_tf_average_pool(x)),
        ], dim=1)


class InceptionB(nn.Module):
    """Mixed_6a: the grid reduction 35x35 -> 17x17 (Szegedy et al. 2016, Fig. 10). Branches: 3x3 stride 2 (384);
    1x1 -> 3x3 -> 3x3 stride 2 (64 -> 96 -> 96); 3x3 max pool stride 2 (the input's channels)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class FIDInceptionC(nn.Module):
    """Mixed_6b..6e (Szegedy et al. 2016, Fig. 6: n x n factorised into 1x7 and 7x1, n = 7), 17x17.

    Branches: 1x1 (192); 1x1 -> 1x7 -> 7x1 (c7, c7, 192); 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 (c7, c7, c7, c7, 192);
    TensorFlow average pool -> 1x1 (192). ``c7`` = ``channels_7x7``: 128, 160, 160, 192."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x), seven, double, self.branch_pool(_tf_average_pool(x))], dim=1)


class InceptionD(nn.Module):
    """Mixed_7a: the grid reduction 17x17 -> 8x8. Branches: 1x1 -> 3x3 stride 2 (192 -> 320);
    1x1 -> 1x7 -> 7x1 -> 3x3 stride 2 (192 each); 3x3 max pool stride 2 (the input's channels)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            seven = layer(seven)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, kernel_size=3, stride=2)],
                         dim=1)


class FIDInceptionE_1(nn.Module):
    """Mixed_7b (Szegedy et al. 2016, Fig. 7: the 3x3s split into parallel 1x3 and 3x1), 8x8, 2048 channels out.

    Branches: 1x1 (320); 1x1 -> [1x3 | 3x1] (384 -> 384 + 384); 1x1 -> 3x3 -> [1x3 | 3x1] (448 -> 384 -> 384 + 384);
    pool -> 1x1 (192). The pool is TensorFlow's 3x3 average pool here and a 3x3 max pool in :class:`FIDInceptionE_2`."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return _tf_average_pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(a), self.branch3x3_2b(a),
            self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
            self.branch_pool(self.pool(x)),
        ], dim=1)


class FIDInceptionE_2(FIDInceptionE_1):
    """Mixed_7c: :class:`FIDInceptionE_1` with a 3x3 *max* pool (stride 1, padding 1) before ``branch_pool``,
    as in the released TensorFlow graph (the paper's figure shows an average pool)."""

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def resize_to_input(x: torch.Tensor) -> torch.Tensor:
    """Bilinear resize to 299x299 with half-pixel centres and no antialiasing (pytorch-fid's ``resize_input``)."""
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)


class FIDInceptionV3(nn.Module):
    """Inception-v3 up to pool_3, as in TensorFlow's 2015-12-05 graph; attribute names = the weight files' keys.

    ``forward`` takes (N, 3, H, W) pixels in [-1, 1] at any size and returns the (N, 2048) pool_3 features.
    The shapes in the comments are for the 299x299 input (Szegedy et al. 2016, Table 1)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)      # 149x149x32
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)               # 147x147x32
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)    # 147x147x64, then max pool: 73x73x64
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)               # 73x73x80
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)              # 71x71x192, then max pool: 35x35x192
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)      # 35x35x256
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)      # 35x35x288
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)      # 35x35x288
        self.Mixed_6a = InceptionB(288)                           # 17x17x768
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)      # 17x17x768
        self.Mixed_7a = InceptionD(768)                           # 8x8x1280
        self.Mixed_7b = FIDInceptionE_1(1280)                     # 8x8x2048
        self.Mixed_7c = FIDInceptionE_2(2048)                     # 8x8x2048, then the mean over 8x8: pool_3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = resize_to_input(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))


def _unused(key: str) -> bool:
    """Tensors a weights file may carry that the features do not read: the 1008-class ``fc``, BatchNorm's counters."""
    return key in ("fc.weight", "fc.bias") or key.endswith(".num_batches_tracked")


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with a ``constants.pkl``; a ``torch.save`` state dict is a zip without one."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def load_fid_inception(path) -> FIDInceptionV3:
    """:class:`FIDInceptionV3` (eval mode, float32, no gradients) with the weights of the file at ``path``:
    pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` or torch-fidelity's
    ``weights-inception-2015-12-05-6726825d.pth``. Anything else is a :class:`~diffusion_notes.errors.CheckpointError`
    whose one line names the file, what is wrong, and the file expected."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; FID needs the Inception weights file {_EXPECTED}")
    if _is_torchscript(path):
        raise CheckpointError(f"{path}: is a TorchScript archive (clean-fid's inception-2015-12-05.pt?), not a state "
                              f"dict; expected {_EXPECTED}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{path}: cannot be read as a PyTorch state dict ({type(err).__name__}: {first[:120]}); "
                              f"expected {_EXPECTED}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors; expected {_EXPECTED}")
    model = FIDInceptionV3()
    wanted = {k: v for k, v in model.state_dict().items() if not _unused(k)}
    given = {k: v for k, v in state.items() if not _unused(k)}
    missing = [k for k in wanted if k not in given]
    unexpected = [k for k in given if k not in wanted]
    if missing or unexpected:
        parts = [f"{len(missing)} tensors missing (first: {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (first: {unexpected[0]})"] if unexpected else []
        raise CheckpointError(f"{path}: not FID's Inception-v3 state dict: {', '.join(parts)}; expected {_EXPECTED}")
    for key, tensor in given.items():
        if tensor.shape != wanted[key].shape:
            raise CheckpointError(f"{path}: tensor {key} has shape {tuple(tensor.shape)}, FID's Inception-v3 has "
                                  f"{tuple(wanted[key].shape)}; expected {_EXPECTED}")
    model.load_state_dict({k: v.float() for k, v in given.items()}, strict=False)
    return model.eval().requires_grad_(False)


@lru_cache(maxsize=1)
def _cached_model(resolved: str, mtime_ns: int, size: int) -> FIDInceptionV3:
    return load_fid_inception(resolved)


def _model_for(weights) -> FIDInceptionV3:
    if isinstance(weights, FIDInceptionV3):
        return weights
    path = Path(weights)
    if not path.is_file():
        return load_fid_inception(path)  # raises the one-line error
    stat = path.stat()
    return _cached_model(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def to_inception_input(images) -> torch.Tensor:
    """Images -> (N, 3, H, W) float32 in [-1, 1], what :class:`FIDInceptionV3` reads. Accepted: a tensor (N, C, H, W)
    in [-1, 1] (the package's convention); uint8 arrays (N, H, W, C) in 0..255 (PNG pixels, mapped as
    ``u / 255 * 2 - 1``, pytorch-fid's ``ToTensor`` then ``2x - 1``); float arrays (N, H, W, C) in [0, 1] (the
    pipeline's ``arrays``); a list of PIL images. One channel (grey) is repeated to three, as PIL's
    ``convert("RGB")`` does in pytorch-fid. Values are clipped to [-1, 1]."""
    if isinstance(images, np.ndarray) or (isinstance(images, (list, tuple)) and not torch.is_tensor(images[0])):
        arrays = np.stack([np.asarray(im) for im in images]) if isinstance(images, (list, tuple)) else images
        arrays = arrays[..., None] if arrays.ndim == 3 else arrays
        unit = arrays.astype(np.float32) / 255.0 if arrays.dtype == np.uint8 else arrays.astype(np.float32)
        images = torch.from_numpy(unit * 2.0 - 1.0).permute(0, 3, 1, 2)
    x = torch.as_tensor(images).detach().float().cpu()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W) tensors or (N, H, W, 1 or 3) arrays, got shape {tuple(x.shape)}")
    return x.expand(-1, 3, -1, -1).clamp(-1, 1)


def inception_features(images, weights, batch_size: int = 50, device="cpu") -> np.ndarray:
    """The (N, 2048) pool_3 features, float64, of ``images`` (see :func:`to_inception_input`), computed in float32
    batches of ``batch_size`` (pytorch-fid's default 50) on ``device``. ``weights``: the path of the weights file
    (loaded once and kept while the file is unchanged) or a loaded :class:`FIDInceptionV3`."""
    model = _model_for(weights).to(device)
    x = to_inception_input(images)
    with torch.inference_mode():
        batches = [model(x[i:i + batch_size].to(device)).cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(batches).double().numpy()


def fid(images_a, images_b, *, weights, batch_size: int = 50, device="cpu") -> float:
    r"""FID (Heusel et al. 2017, Eq. 6): :func:`~.frechet.frechet_distance` of the Gaussians fitted to the Inception
    pool_3 features of two image sets, with the weights file at ``weights`` (:func:`load_fid_inception`).

    Papers use 10k-50k images per set; with fewer the value is biased upward (notebook 16 shows the 1/N fall of
    the Fréchet distance), and images saved as PNG (uint8) give the numbers comparable to published ones."""
    features_a = inception_features(images_a, weights, batch_size, device)
    features_b = inception_features(images_b, weights, batch_size, device)
    return frechet_distance_of_features(features_a, features_b)

r"""Convolutions whose weights are stored the way oneDNN reads them: faster CPU inference.

A CPU convolution in torch runs in oneDNN (``aten::mkldnn_convolution``), which computes
:math:`y = W * x + b` with the weight in a *blocked* layout (channels grouped in 8s or 16s to fit the
vector registers). ``F.conv2d`` receives the weight in torch's ``(out, in, kh, kw)`` layout and
reorders it on every call. For the deep layers of a UNet the weight is much larger than the
activation (SD 1.5's 1280-channel 3x3 convolutions: 59 MB of weight, 0.6 MB of input at 2x4x32x32
latents), so the reorder costs more than the arithmetic: measured on an AVX2 CPU, one such
convolution takes 62 ms through ``F.conv2d`` and 25 ms with the weight reordered once beforehand
(docs/benchmarks.md). This is what IPEX and torch.compile's CPU backend (inductor's
``mkldnn_fusion`` weight packing) do; here it is one module and one function.

* :class:`PrepackedConv2d`: an ``nn.Conv2d`` for inference whose weight is kept reordered
  ("prepacked") for the input shape it last saw. Its result differs from ``F.conv2d``'s by float32
  rounding only (oneDNN may sum in another order; about 4e-6 relative on the whole SD 1.5 UNet).
* :func:`prepack_convolutions` / :func:`unpack_convolutions`: swap every ``nn.Conv2d`` of a network
  for a :class:`PrepackedConv2d` and back. The loaders call the first on the networks they build for
  the CPU (``prepack=`` of ``StableDiffusion.from_single_file`` / ``from_pretrained``).

The prepacked weight *replaces* the plain one, so memory does not grow. The price is that the weight
is no longer a ``Parameter``: such a network is for inference. Gradients still flow to the *input*
(guidance by gradients works), never to the weights; a network in training mode
(``model.train()``) with gradients enabled refuses to run rather than silently not learn. Call
:func:`unpack_convolutions` (or load with ``prepack=False``) to train. ``state_dict()``, ``.to()``,
``.half()``, ``.cuda()`` and ``load_state_dict`` behave as for ``nn.Conv2d``: the state dict holds the
plain ``weight``; off the CPU, or in a dtype oneDNN cannot prepack here (fp16; bf16 without native
bf16), the module runs plain ``F.conv2d``.

Counterparts: diffusers and CompVis run plain ``nn.Conv2d``; k-diffusion too.
"""

from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..hardware import cpu_support

__all__ = ["PrepackedConv2d", "prepack_convolutions", "unpack_convolutions", "prepacking_available",
           "return_freed_memory", "convolutions_channels_last", "runs_channels_last"]


def prepacking_available() -> bool:
    """True when this torch has oneDNN and the two operators used here (torch >= 2.1 CPU builds), as
    :func:`diffusion_notes.hardware.cpu_support` answers (tests may force it)."""
    return cpu_support().prepacking


class PrepackedConv2d(nn.Module):
    """``nn.Conv2d`` (zero padding) for inference, its weight reordered once for oneDNN (see module doc).

    ``weight`` reads as the plain ``(out, in, kh, kw)`` tensor; while prepacked that is a fresh copy,
    so writing into it changes nothing: change weights with ``load_state_dict`` (or unpack first).
    ``bias`` is an ordinary parameter. Output on the prepacked path is channels-last, like oneDNN's own convolution
    on channels-last input; every torch op downstream accepts it.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"PrepackedConv2d takes zero-padded convolutions with explicit padding, "
                             f"not padding={conv.padding!r}, padding_mode={conv.padding_mode!r}.")
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
            setattr(self, name, getattr(conv, name))
        self.register_parameter("bias", conv.bias)
        self._plain = conv.weight.detach()  # the (out, in, kh, kw) weight while not prepacked, else None
        self._packed = None                 # the oneDNN-layout weight, prepacked for ``_packed_for``
        self._packed_for = None             # the input shape it was prepacked for
        self._refused = False               # oneDNN could not prepack it here: plain F.conv2d from then on

    # -- the weight in its two forms -----------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        """The plain ``(out, in, kh, kw)`` weight (a fresh copy when it is held prepacked)."""
        if self._plain is not None:
            return self._plain
        with torch.inference_mode(False), torch.no_grad():
            return self._packed.to_dense()

    def _prepack(self, shape: tuple[int, ...]) -> None:
        """Hold the weight reordered for inputs of ``shape`` (and drop the plain copy)."""
        plain = self.weight
        with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, usable outside inference mode
            self._packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                plain.to_mkldnn(), list(self.padding), list(self.stride), list(self.dilation), self.groups, list(shape))
        self._plain, self._packed_for = None, shape
        return_freed_memory()

    def _unpack(self) -> None:
        if self._packed is not None:
            self._plain = self.weight
            self._packed = self._packed_for = None

    def _runs_prepacked(self, x: torch.Tensor) -> bool:
        weight_dtype = self._plain.dtype if self._plain is not None else self._packed.dtype
        return (not self._refused and x.device.type == "cpu" and x.dim() == 4 and x.dtype == weight_dtype
                and cpu_support().prepacks(x.dtype)
                and (self._plain is None or self._plain.device.type == "cpu") and not x.requires_grad
                and (self.bias is None or not (self.bias.requires_grad and torch.is_grad_enabled())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise RuntimeError("this network holds prepacked inference weights (models.prepacked), which cannot "
                               "be trained; call diffusion_notes.models.unpack_convolutions(model) first, or load "
                               "it with prepack=False.")
        if not self._runs_prepacked(x):
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        first = self._packed_for != tuple(x.shape)
        try:
            if first:
                self._prepack(tuple(x.shape))
            return self._convolve_prepacked(x)
        except RuntimeError:
            if not first:
                raise
            # oneDNN cannot reorder or run this weight here (e.g. bf16 forced on a CPU without native bf16):
            # stay plain from now on, as nn.Conv2d
            self._unpack()
            self._refused = True
            return F.conv2d(x, self._plain, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _convolve_prepacked(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.detach()
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.ops.mkldnn._convolution_pointwise(x, self._packed, bias, list(self.padding), list(self.stride),
                                                       list(self.dilation), self.groups, "none", [], "")

    # -- behave like nn.Conv2d for state dicts and .to() ---------------------------------------
    def _apply(self, fn, recurse=True):
        self._unpack()
        self._plain = fn(self._plain)
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight if keep_vars else self.weight.detach()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "weight"
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        if key not in state_dict:
            missing_keys.append(key)
            return
        value, current = state_dict[key], self.weight
        if value.shape != current.shape:
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} from "
                              f"checkpoint, the shape in current model is {tuple(current.shape)}.")
            return
        self._packed = self._packed_for = None
        self._plain = value.detach().to(device=current.device, dtype=current.dtype).clone()

    def __getstate__(self):  # copy.deepcopy, pickle, torch.save: the plain weight (oneDNN's layout is opaque)
        state = super().__getstate__() if hasattr(nn.Module, "__getstate__") else self.__dict__.copy()
        state = dict(state, _plain=self.weight, _packed=None, _packed_for=None)
        return state

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, prepacked_for={self._packed_for}")


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None


def return_freed_memory() -> None:
    """Give the memory the C allocator holds free back to the operating system (glibc's ``malloc_trim(0)``).

    Prepacking frees the plain weight of each convolution and allocates its reordered copy. Weights under
    glibc's mmap threshold (32 MiB; every bf16 weight of SD 1.5's UNet) are freed into the heap, which glibc
    keeps rather than returning, and the reordered copies, a little larger, rarely fit the holes: measured
    on SD 1.5 in bf16, the process grew from 2.49 to 3.70 GiB over the first UNet step while the weights
    did not grow at all; trimming after each reorder keeps it at 2.63 GiB (peak) for 0.16 s in all
    (docs/benchmarks.md, benchmark 7). A no-op where there is no ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def prepack_convolutions(network: nn.Module) -> nn.Module:
    """Replace, in place, every zero-padded ``nn.Conv2d`` inside ``network`` by a :class:`PrepackedConv2d`
    holding the same weight and bias (no copy), and return ``network``. The change is the point of the
    call: afterwards ``network`` is for inference (module doc). A no-op where oneDNN is missing."""
    if not prepacking_available():
        return network
    for parent in network.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d and child.padding_mode == "zeros" and not isinstance(child.padding, str):
                setattr(parent, name, PrepackedConv2d(child))
    return network


def unpack_convolutions(network: nn.Module) -> nn.Module:
    """Undo :func:`prepack_convolutions` in place: plain ``nn.Conv2d`` modules with the weights as
    trainable parameters again (``requires_grad=True``). Returns ``network``."""
    for parent in network.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, PrepackedConv2d):
                weight = child.weight
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                 child.dilation, child.groups, bias=child.bias is not None, device="meta")
                conv.weight = nn.Parameter(weight.detach().clone() if weight.is_inference() else weight.detach())
                if child.bias is not None:
                    conv.bias = child.bias
                setattr(parent, name, conv)
    return network


# -- the memory format of a network's convolutions ---------------------------------------------
#
# ``channels_last`` (NHWC) is a question about plain convolution weights: stored NHWC, a convolution on
# NHWC activations needs no transposes (faster on CUDA). A prepacked weight is in oneDNN's blocked layout,
# which is neither; a prepacked convolution turns its input into NHWC and returns NHWC itself, so it
# *always* runs channels-last and asking for it changes nothing. Hence: prepacked convolutions are never
# touched by these two functions (no unpack, no re-pack, whatever the memory options say).


def convolutions_channels_last(network: nn.Module, channels_last: bool) -> list[nn.Conv2d]:
    """Store the weights of the plain ``nn.Conv2d`` modules of ``network`` NHWC (``channels_last=True``)
    or NCHW, leaving :class:`PrepackedConv2d` modules as they are. Returns the convolutions it changed,
    so that a caller can put them back (``convolutions_channels_last(changed, not channels_last)`` on each)."""
    wanted = torch.channels_last if channels_last else torch.contiguous_format
    changed = [m for m in network.modules()
               if type(m) is nn.Conv2d and not m.weight.is_contiguous(memory_format=wanted)]
    for conv in changed:
        conv.to(memory_format=wanted)
    return changed


def runs_channels_last(network: nn.Module) -> bool:
    """True when every convolution of ``network`` runs channels-last: plain ones with NHWC weights,
    prepacked ones always (see above). False for a network without convolutions."""
    convs = [m for m in network.modules() if isinstance(m, (nn.Conv2d, PrepackedConv2d))]
    return bool(convs) and all(isinstance(m, PrepackedConv2d) or m.weight.is_contiguous(memory_format=torch.channels_last)
                               for m in convs)

r"""What this CPU can do, asked in one place: native bf16 arithmetic, and oneDNN weight prepacking.

Two code paths depend on the CPU, and the machines this package runs on differ from one day to the
next (an AVX2-only CPU, or one with AVX-512 BF16 or AMX):

* the default precision (:func:`diffusion_notes.precision.default_dtype`): bf16 only where the CPU
  multiplies bf16 matrices in hardware, else fp32;
* prepacked convolutions (:mod:`diffusion_notes.models.prepacked`): fp32 weights are prepacked wherever
  torch has oneDNN; bf16 weights only where bf16 is native as well (oneDNN has no bf16 kernels elsewhere).

Both read :func:`cpu_support`, and nothing else asks the hardware. Tests (and readers who want to see
what another machine would do) replace the answer with :func:`forced_cpu_support`, so every path can
be run on any machine: forcing ``native_bf16=True`` on a CPU without it is safe, since bf16 still
runs (emulated, slowly) and a convolution that oneDNN refuses to prepack falls back to ``F.conv2d``.

Counterparts: torch's own ``torch.cpu.get_capabilities()`` (torch >= 2.8; older versions answer
"no native bf16") and ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``; IPEX asks the same questions.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

__all__ = ["CpuSupport", "cpu_support", "forced_cpu_support", "native_bf16_from_capabilities"]

#: Capability names that mean bf16 matrix products run in hardware (``torch.cpu.get_capabilities``).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16")


@dataclass(frozen=True)
class CpuSupport:
    """``native_bf16``: bf16 matrix instructions (x86 AMX-BF16 / AVX-512 BF16, Arm BF16);
    ``prepacking``: this torch has oneDNN and the two operators :mod:`~diffusion_notes.models.prepacked` uses."""

    native_bf16: bool
    prepacking: bool

    def prepacks(self, dtype: torch.dtype) -> bool:
        """Whether convolution weights of ``dtype`` are kept prepacked for oneDNN: fp32 wherever
        prepacking exists, bf16 only with native bf16 too, nothing else (fp16, fp64)."""
        if dtype == torch.float32:
            return self.prepacking
        return dtype == torch.bfloat16 and self.prepacking and self.native_bf16


def native_bf16_from_capabilities(capabilities: Mapping) -> bool:
    """True when a ``torch.cpu.get_capabilities()``-like mapping lists a native bf16 instruction set."""
    return any(bool(capabilities.get(name, False)) for name in NATIVE_BF16_FLAGS)


@functools.cache
def detected_cpu_support() -> CpuSupport:
    """This machine's answer, asked once per process (every convolution call reads it)."""
    query = getattr(torch.cpu, "get_capabilities", None)
    native = native_bf16_from_capabilities(query()) if query is not None else False
    try:
        prepacking = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
                      and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"))
    except (AttributeError, RuntimeError):
        prepacking = False
    return CpuSupport(native_bf16=native, prepacking=prepacking)


_forced: list[CpuSupport] = []  # innermost forced_cpu_support last


def cpu_support() -> CpuSupport:
    """What the CPU can do: the innermost :func:`forced_cpu_support` answer, else this machine's."""
    return _forced[-1] if _forced else detected_cpu_support()


@contextlib.contextmanager
def forced_cpu_support(*, native_bf16: bool | None = None, prepacking: bool | None = None):
    """Within the block, :func:`cpu_support` answers as told (None keeps the current answer).

    Only what is decided *inside* the block follows it: a model loaded inside keeps the precision it
    got, and a convolution asks at every call whether its weight's dtype is prepacked."""
    current = cpu_support()
    answer = replace(current, native_bf16=current.native_bf16 if native_bf16 is None else bool(native_bf16),
                     prepacking=current.prepacking if prepacking is None else bool(prepacking))
    _forced.append(answer)
    try:
        yield answer
    finally:
        _forced.remove(answer)

r"""Which floating-point type the networks run in: one decision, made here.

* CUDA: fp16 (half the memory; tensor cores).
* CPU with native bf16 matrix instructions (x86 AMX-BF16 or AVX-512 BF16, Arm's BF16 extension):
  bf16. oneDNN then runs the convolutions and matrix products in bf16 with fp32 accumulation; a quick
  trial on such a CPU ran the SD 1.5 UNet about twice as fast as in fp32 (shared/NOTES.md). The cost:
  a relative error of about 1e-2 in one UNet output (full-size SD 1.5, random weights; see
  docs/benchmarks.md).
* Any other CPU: fp32. Without those instructions bf16 is emulated: the SD 1.5 UNet ran 19-46x
  slower than in fp32 on an AVX2-only CPU (docs/benchmarks.md).

bf16 keeps fp32's exponent range (8 bits) with a 7-bit mantissa, so unlike fp16 it cannot overflow
where fp32 does not. What stays in higher precision whatever the choice: the noise schedule (float64,
``schedules.NoiseSchedule``), the latents between sampler steps (float32, ``pipeline._unet_model``),
the GroupNorm statistics (``models.unet.GroupNorm32``) and, when asked, the attention softmax
(``upcast_attention``).

Counterparts: diffusers always defaults to float32 (``torch_dtype=None``); CompVis's scripts use
``precision_scope = autocast`` on CUDA. The capability query is torch's own
``torch.cpu.get_capabilities()`` (torch >= 2.8; older versions get fp32), asked through
:func:`diffusion_notes.hardware.cpu_support`, which tests can force either way.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .errors import SettingsError
from .hardware import cpu_support, native_bf16_from_capabilities

__all__ = ["PRECISIONS", "cpu_has_native_bf16", "default_dtype", "resolve_dtype", "dtype_name"]

#: ``--precision`` values and the dtypes they select ("auto": :func:`default_dtype`).
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: CompVis's ``--precision`` spellings: ``autocast`` (its default) and ``full`` (fp32).
_ALIASES = {"full": "fp32", "autocast": "auto", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
def cpu_has_native_bf16(capabilities: Mapping | None = None) -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (x86 ``amx_bf16`` / ``avx512_bf16``,
    Arm ``bf16`` / ``sve_bf16``): from ``capabilities`` (a ``torch.cpu.get_capabilities()``-like
    mapping) when given, else :func:`diffusion_notes.hardware.cpu_support` (this machine, or what a
    test forced)."""
    if capabilities is None:
        return cpu_support().native_bf16
    return native_bf16_from_capabilities(capabilities)


def default_dtype(device=None, capabilities: Mapping | None = None) -> torch.dtype:
    """fp16 on CUDA, bf16 on a CPU with native bf16 (:func:`cpu_has_native_bf16`), fp32 elsewhere.

    ``device`` None means the CPU; ``capabilities`` (a ``torch.cpu.get_capabilities()``-like
    mapping) replaces the query of this machine, e.g. to ask what another CPU would get.
    """
    kind = torch.device(device if device is not None else "cpu").type
    if kind == "cuda":
        return torch.float16
    if kind == "cpu" and cpu_has_native_bf16(capabilities):
        return torch.bfloat16
    return torch.float32


def resolve_dtype(precision, device=None) -> torch.dtype:
    """A ``torch.dtype`` from ``precision``: a dtype, None or ``"auto"`` (:func:`default_dtype` of
    ``device``), or one of ``fp32``, ``bf16``, ``fp16`` (CompVis's ``full`` and ``autocast`` too).

    Raises :class:`SettingsError` (option ``precision``) for anything else.
    """
    if isinstance(precision, torch.dtype):
        if precision not in PRECISIONS.values():
            raise SettingsError("precision", f"{precision} is not a dtype the networks run in; use one of "
                                f"{', '.join(map(str, PRECISIONS.values()))}.")
        return precision
    if precision is None:
        return default_dtype(device)
    name = _ALIASES.get(str(precision).lower(), str(precision).lower())
    if name == "auto":
        return default_dtype(device)
    if name not in PRECISIONS:
        raise SettingsError("precision", f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16.")
    return PRECISIONS[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` (what ``--precision`` calls it)."""
    return next((name for name, d in PRECISIONS.items() if d == dtype), str(dtype).removeprefix("torch."))

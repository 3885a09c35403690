"""The default precision (diffusion_notes.precision): bf16 only on CPUs with native bf16, checked
against the kernel's own CPU flags, and the spellings ``--precision`` / ``torch_dtype=`` accept."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from diffusion_notes.errors import SettingsError
from diffusion_notes.precision import cpu_has_native_bf16, default_dtype, dtype_name, resolve_dtype

# What torch.cpu.get_capabilities() reports on three kinds of machine (only the keys that matter).
SAPPHIRE_RAPIDS = {"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": True}
ZEN3 = {"architecture": "x86_64", "avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}
GRAVITON3 = {"architecture": "arm64", "neon": True, "bf16": True, "sve": True, "sve_bf16": True}


@pytest.mark.parametrize("capabilities, expected", [
    (SAPPHIRE_RAPIDS, torch.bfloat16), (ZEN3, torch.float32), (GRAVITON3, torch.bfloat16), ({}, torch.float32),
])
def test_the_cpu_default_is_bf16_only_with_native_bf16(capabilities, expected):
    assert default_dtype("cpu", capabilities) == expected
    assert default_dtype(None, capabilities) == expected


def test_cuda_defaults_to_fp16_whatever_the_cpu():
    assert default_dtype("cuda", SAPPHIRE_RAPIDS) == torch.float16
    assert default_dtype(torch.device("cuda", 1), ZEN3) == torch.float16


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not Path("/proc/cpuinfo").is_file(),
                    reason="the oracle is the Linux x86 kernel's CPU flags")
def test_torch_query_agrees_with_the_kernel_cpu_flags():
    query = getattr(torch.cpu, "get_capabilities", None)
    if query is None:
        pytest.skip("torch.cpu.get_capabilities needs torch >= 2.8")
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    assert cpu_has_native_bf16(query()) == ("amx_bf16" in flags or "avx512_bf16" in flags)


@pytest.mark.parametrize("spelling, expected", [
    ("fp32", torch.float32), ("full", torch.float32), ("bf16", torch.bfloat16), ("FP16", torch.float16),
    (torch.bfloat16, torch.bfloat16), ("float16", torch.float16),
])
def test_explicit_precisions(spelling, expected):
    assert resolve_dtype(spelling, "cpu") == expected


def test_auto_and_none_follow_the_device_default():
    # The test suite pins the CPU default to fp32 (tests/conftest.py).
    assert resolve_dtype("auto", "cpu") == resolve_dtype(None, "cpu") == resolve_dtype("autocast") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.float16


@pytest.mark.parametrize("bad", ["fp8", "half-ish", torch.int8, torch.float64])
def test_unknown_precisions_are_refused_naming_the_option(bad):
    with pytest.raises(SettingsError) as info:
        resolve_dtype(bad, "cpu")
    assert info.value.option == "precision"


def test_dtype_names():
    assert [dtype_name(d) for d in (torch.float32, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]

"""Shared test settings: no network, deterministic threads, CUDA tests skipped without a GPU."""

import os

# Loading code must never reach the hub in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _fp32_cpu_default():
    """Pin the CPU default precision to fp32 in every test, whatever this CPU supports.

    Since the bf16 default (``diffusion_notes.precision``), a CPU with AMX or AVX-512 BF16 would load
    models in bf16 when no dtype is given, and the diffusers-equivalence tests compare in fp32 to
    1e-5. Pinned here, in one place, by hiding the CPU's capabilities; tests of the default itself
    pass ``capabilities=`` explicitly (tests/test_precision.py).
    """
    from diffusion_notes import precision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "cpu_capabilities", lambda: {})
        yield

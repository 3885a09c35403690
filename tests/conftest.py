"""Shared test settings: no network, deterministic threads, CUDA tests skipped without a GPU."""

import os

# Loading code must never reach the hub in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch


#: Test folders whose small convolutions run on one torch thread (see ``one_torch_thread``).
ONE_THREAD_FOLDERS = {"toy", "mini_sd"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = item.path.parent
        if folder.name in ONE_THREAD_FOLDERS and folder.parent.name == "tests":
            item.add_marker(pytest.mark.usefixtures("one_torch_thread"))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, restored afterwards.

    The test machine has 2 cores shared with other jobs; two oversubscribed OpenMP threads there make
    the toy and miniature models' small convolutions several times slower than one thread does
    (measured: 123 ms vs ~900 ms per training step under load).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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

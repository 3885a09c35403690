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
    1e-5. Pinned here, in one place, by forcing the one capability answer
    (:func:`diffusion_notes.hardware.forced_cpu_support`); with it, bf16 weights are never prepacked
    either, on any CPU. Tests of the default itself pass ``capabilities=`` explicitly
    (tests/test_precision.py); tests of CPU-dependent paths force each answer themselves
    (``cpu_answers`` below).
    """
    from diffusion_notes.hardware import forced_cpu_support

    with forced_cpu_support(native_bf16=False):
        yield


#: Both answers of the CPU capability that generation depends on (diffusion_notes.hardware): an
#: AVX2-only CPU (fp32 prepacked, bf16 plain) and a CPU with native bf16 (both prepacked), plus no
#: prepacking at all (a torch without oneDNN). Forcing native bf16 on a CPU without it is safe: bf16
#: then runs emulated, and a convolution oneDNN refuses falls back to F.conv2d.
CPU_ANSWERS = {"avx2": dict(native_bf16=False, prepacking=True), "native-bf16": dict(native_bf16=True, prepacking=True),
               "no-onednn": dict(native_bf16=False, prepacking=False)}


@pytest.fixture(params=list(CPU_ANSWERS))
def cpu_answers(request):
    """Run the test under each answer of :data:`CPU_ANSWERS`, whatever this machine's CPU is."""
    from diffusion_notes.hardware import forced_cpu_support

    with forced_cpu_support(**CPU_ANSWERS[request.param]) as answer:
        yield answer

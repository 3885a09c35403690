"""Fixture of the model tests: one torch thread for tiny networks (shared with ``tests/checkpoints`` and
``tests/pipeline``, which also run tiny models)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP's spinning
    threads make each tiny UNet call ~50x slower; restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

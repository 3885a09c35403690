"""Run the miniature-SD tests on one torch thread.

The test machine has 2 cores shared with other jobs; two oversubscribed OpenMP threads there make
these small convolutions several times slower than one thread does (measured: 123 ms vs ~900 ms
per training step under load). Restored after each test so other test directories are unaffected.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

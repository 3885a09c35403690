"""Fixtures of the model tests: tiny diffusers folders, built once per session and per family."""

from __future__ import annotations

import pytest
import torch

from .builders import make_tiny_diffusers_folder


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP's spinning
    threads make each tiny UNet call ~50x slower; restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``tiny(family) -> (folder, diffusers_pipeline)``; each family is built on first use."""
    root = tmp_path_factory.mktemp("tiny-models")
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = (root / family, make_tiny_diffusers_folder(root / family, family))
        return cache[family]

    return get

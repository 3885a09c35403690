"""Fixtures of the checkpoint tests: tiny diffusers folders, built once per session and per family
(with diffusers' own classes: ``tests/models/builders.py``), read and written by the tests here and
in ``tests/pipeline``."""

from __future__ import annotations

import pytest

from models.builders import make_tiny_diffusers_folder
from models.conftest import one_cpu_thread  # noqa: F401  (autouse fixture, shared with the model tests)


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

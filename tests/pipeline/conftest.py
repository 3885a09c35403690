"""Fixtures of the pipeline tests: the model tests' tiny diffusers folders (one build per session and
family) and their one-thread setting, loaded once more as our ``StableDiffusion``."""

from __future__ import annotations

import pytest

from diffusion_notes.stable_diffusion import StableDiffusion
from models.conftest import one_cpu_thread, tiny  # noqa: F401  (fixtures, shared with the model tests)


@pytest.fixture(scope="session")
def ours(tiny):
    """``ours(family) -> StableDiffusion`` loaded from the tiny diffusers folder of ``family``."""
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = StableDiffusion.from_pretrained(tiny(family)[0])
        return cache[family]

    return get

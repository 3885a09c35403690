"""Fixtures of the pipeline tests: the checkpoint tests' tiny diffusers folders (one build per session and
family) and the model tests' one-thread setting, loaded once more as our ``StableDiffusion``."""

from __future__ import annotations

import pytest

from diffusion_notes.stable_diffusion import StableDiffusion
from checkpoints.conftest import tiny  # noqa: F401  (fixture, shared with the checkpoint tests)
from models.conftest import one_cpu_thread  # noqa: F401  (fixture, shared with the model tests)


@pytest.fixture(scope="session")
def ours(tiny):
    """``ours(family) -> StableDiffusion`` loaded from the tiny diffusers folder of ``family``."""
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = StableDiffusion.from_pretrained(tiny(family)[0])
        return cache[family]

    return get

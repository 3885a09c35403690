"""Fixtures of the adapter tests: the model tests' tiny diffusers folders (one build per session and family)
and their one-thread setting."""

from __future__ import annotations

from checkpoints.conftest import tiny  # noqa: F401  (fixture, shared with the checkpoint tests)
from models.conftest import one_cpu_thread  # noqa: F401  (fixture, shared with the model tests)

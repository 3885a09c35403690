"""Fixtures of the adapter tests: the model tests' tiny diffusers folders (one build per session and family)
and their one-thread setting."""

from __future__ import annotations

from models.conftest import one_cpu_thread, tiny  # noqa: F401  (fixtures, shared with the model tests)

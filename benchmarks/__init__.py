"""Benchmarks of this package against diffusers (run them as ``python -m benchmarks.NAME``; see docs/benchmarks.md)."""

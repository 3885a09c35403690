"""The quality lesson's two exercise checkers: the solutions pass, typical mistakes get their hint, stubs are reported."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from diffusion_notes.exercises import EXERCISES
from diffusion_notes.exercises.quality import FRECHET, NFE, check_frechet_distance_of_gaussians, check_nfe_and_batch

PATH = Path(__file__).resolve().parents[1] / "notebooks" / "exercises" / "solutions" / "quality.py"
_spec = importlib.util.spec_from_file_location("quality_solutions", PATH)
solutions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(solutions)

CHECKS = {"frechet_distance_of_gaussians": (FRECHET, check_frechet_distance_of_gaussians),
          "nfe_and_batch": (NFE, check_nfe_and_batch)}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_solution_accepted(name, capsys):
    assert CHECKS[name][1](getattr(solutions, name)) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_each_typical_mistake_gets_its_hint(name, capsys):
    exercise, check = CHECKS[name]
    for mistake, message in exercise.mistakes:
        assert check(mistake) is False
        out = capsys.readouterr().out
        assert f"hint: {message}" in out, out


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_stub_reported(name, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    assert CHECKS[name][1](stub) is False
    assert "not implemented yet" in capsys.readouterr().out


def test_kept_out_of_the_shared_registry():
    assert not set(CHECKS) & set(EXERCISES)

"""The flow-matching, EDM and bound exercises (notebooks/exercises/11_flow_matching.ipynb, 12_edm_and_bound.ipynb): each checker accepts the solution,
rejects the typical mistakes with their hints, and reports a stub; its references equal the library's functions,
which tests/test_flow_matching.py checks against diffusers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import diffusion_notes.exercises as exercises
from diffusion_notes import flow_matching as fm
from diffusion_notes.exercises import flow_matching as module
from diffusion_notes.flow_sampling import flow_euler_step

SOLUTIONS = Path(__file__).resolve().parents[1] / "notebooks" / "exercises" / "solutions"
NAMES = {"flow_path_and_target": "flow_matching", "eps_from_velocity": "flow_matching", "flow_euler_step": "flow_matching",
         "sd3_shift": "flow_matching", "edm_preconditioning": "edm_and_bound", "edm_loss_weight": "edm_and_bound",
         "gaussian_kl": "edm_and_bound", "vlb_eps_weight": "edm_and_bound"}


def _solutions(name):
    spec = importlib.util.spec_from_file_location(f"{NAMES[name]}_solutions", SOLUTIONS / f"{NAMES[name]}.py")
    solutions = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(solutions)
    return solutions


@pytest.mark.parametrize("name", NAMES)
def test_solution_accepted_and_every_listed_mistake_rejected_with_its_hint(name, capsys):
    check = getattr(exercises, f"check_{name}")
    assert check(getattr(_solutions(name), name)) is True
    assert "correct" in capsys.readouterr().out
    for mistake, hint in exercises.EXERCISES[name].mistakes:
        assert check(mistake) is False
        out = capsys.readouterr().out
        assert "expected" in out and hint[:40] in out, out


@pytest.mark.parametrize("name", NAMES)
def test_stub_reported_not_raised(name, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    assert getattr(exercises, f"check_{name}")(stub) is False
    assert "not implemented yet" in capsys.readouterr().out


def test_references_are_the_library_functions():
    for label, case in module._path_cases():
        x_t, u = exercises.EXERCISES["flow_path_and_target"].reference(**case)
        torch.testing.assert_close(x_t, fm.flow_path(case["x0"], case["eps"], case["t"]))
        torch.testing.assert_close(u, fm.flow_velocity_target(case["x0"], case["eps"]))
    for label, case in module._eps_cases():
        torch.testing.assert_close(exercises.EXERCISES["eps_from_velocity"].reference(**case), fm.eps_from_velocity(**case))
    for label, case in module._euler_cases():
        torch.testing.assert_close(exercises.EXERCISES["flow_euler_step"].reference(**case), flow_euler_step(**case)[0])
    for label, case in module._shift_cases():
        torch.testing.assert_close(exercises.EXERCISES["sd3_shift"].reference(**case), fm.shift_sigmas(case["sigmas"], case["shift"]))

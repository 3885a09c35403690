"""The inversion-and-guidance exercises (notebook exercises/10): the solutions pass, every typical mistake
gets its own hint, stubs and errors are reported, and the checkers stay out of the shared registry."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from diffusion_notes.exercises import EXERCISES
from diffusion_notes.exercises.inversion_guidance import (
    CLASSIFIER_GUIDANCE, CONSISTENCY, INVERSION_STEP, LCM_STEP, SLERP, TEACHER_STEP, check_classifier_guided_eps,
    check_consistency_function, check_ddim_inversion_step, check_lcm_step, check_lcm_teacher_step, check_slerp,
)

PATH = Path(__file__).resolve().parents[1] / "notebooks" / "exercises" / "solutions" / "inversion_guidance.py"
_spec = importlib.util.spec_from_file_location("inversion_guidance_solutions", PATH)
solutions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(solutions)

CHECKS = {"ddim_inversion_step": (INVERSION_STEP, check_ddim_inversion_step), "slerp": (SLERP, check_slerp),
          "classifier_guided_eps": (CLASSIFIER_GUIDANCE, check_classifier_guided_eps),
          "consistency_function": (CONSISTENCY, check_consistency_function), "lcm_step": (LCM_STEP, check_lcm_step),
          "lcm_teacher_step": (TEACHER_STEP, check_lcm_teacher_step)}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_solution_accepted(name, capsys):
    assert CHECKS[name][1](getattr(solutions, name)) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_each_typical_mistake_gets_its_hint(name, capsys):
    exercise, check = CHECKS[name]
    assert len(exercise.mistakes) >= 3
    for mistake, message in exercise.mistakes:
        assert check(mistake) is False
        out = capsys.readouterr().out
        assert "expected" in out and f"hint: {message}" in out, out


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_stub_and_errors_reported_not_raised(name, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    def broken(*args, **kwargs):
        raise ValueError("oops")

    check = CHECKS[name][1]
    assert check(stub) is False and "not implemented yet" in capsys.readouterr().out
    assert check(broken) is False and "raised ValueError: oops" in capsys.readouterr().out


def test_the_inversion_step_undoes_a_sampling_step_only_in_the_limit():
    """Independent of the library: with the same e_t, a DDIM step down and the inversion step up are exact
    inverses (Eq. 12 with eta = 0 is an affine map in x for fixed e_t)."""
    import torch

    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    a_t, a_prev = 0.3, 0.6
    down = a_prev**0.5 * (x - (1 - a_t) ** 0.5 * e) / a_t**0.5 + (1 - a_prev) ** 0.5 * e
    torch.testing.assert_close(solutions.ddim_inversion_step(down, e, a_prev, a_t), x, rtol=1e-12, atol=1e-12)


def test_the_lcm_step_is_deterministic_only_through_its_noise():
    """Independent of the library: with a_prev = 1 the step returns f itself, and the consistency function's
    boundary condition makes the step at t = 0 a pure re-noising of x: sqrt(a_prev) x + sqrt(1 - a_prev) z."""
    import torch

    g = torch.Generator().manual_seed(1)
    x, e, z = (torch.randn(3, 2, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(solutions.lcm_step(x, e, 0.9, 0, 0.25, z), 0.5 * x + 0.75**0.5 * z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(solutions.lcm_step(x, e, 0.9, 500, 1.0, z), solutions.consistency_function(x, e, 0.9, 500),
                               rtol=1e-12, atol=1e-12)


def test_the_teacher_step_with_omega_zero_is_the_conditional_ddim_step():
    """Independent of the library: omega = 0 is the unguided conditional model, and with the uncond and cond
    predictions equal no omega changes anything (guidance only extrapolates their difference)."""
    import torch

    g = torch.Generator().manual_seed(2)
    x, e_u, e_c = (torch.randn(3, 2, generator=g, dtype=torch.float64) for _ in range(3))
    ddim = 0.7**0.5 * (x - 0.6**0.5 * e_c) / 0.4**0.5 + 0.3**0.5 * e_c
    torch.testing.assert_close(solutions.lcm_teacher_step(x, e_u, e_c, 0.0, 0.4, 0.7), ddim, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(solutions.lcm_teacher_step(x, e_c, e_c, 6.5, 0.4, 0.7), ddim, rtol=1e-12, atol=1e-12)


def test_kept_out_of_the_shared_registry():
    assert not set(CHECKS) & set(EXERCISES)

"""Model evaluations per sampler against the counts the papers state."""

from __future__ import annotations

import pytest

from diffusion_notes.errors import SettingsError
from diffusion_notes.quality.nfe import count_model_evaluations, steps_for_nfe


@pytest.mark.parametrize("steps", [2, 5, 10, 20])
def test_counts_stated_by_the_papers(steps):
    # one evaluation per step: DDPM Alg. 2, DDIM, Euler (Karras Alg. 2), DPM-Solver++(2M) (multistep), UniPC-bh2
    # (its corrector reuses the next step's evaluation)
    for sampler in ("ddpm", "ddim", "euler", "euler_a", "lms", "dpmpp_2m", "dpmpp_2m_sde", "unipc"):
        assert count_model_evaluations(sampler, steps) == steps, sampler
    # Karras Alg. 1: two evaluations per step, one on the last (to sigma = 0); DPM-Solver++(2S) likewise
    assert count_model_evaluations("heun", steps) == 2 * steps - 1
    assert count_model_evaluations("dpmpp_2s_a", steps) == 2 * steps - 1
    # CompVis PLMS: the first step is a pseudo improved Euler step (two evaluations)
    assert count_model_evaluations("plms", steps) == steps + 1
    # PNDM: three pseudo Runge-Kutta warm-up steps of four evaluations, then one per step
    if steps > 3:
        assert count_model_evaluations("pndm", steps) == 12 + (steps - 3)


def test_steps_for_a_budget():
    assert steps_for_nfe("euler", 10) == 10
    assert steps_for_nfe("heun", 10) == 5  # 9 evaluations; 6 steps would take 11
    assert steps_for_nfe("ddim", 3) == 2  # CompVis 'uniform' cannot make 3 steps of 1000 (timestep 1000)
    with pytest.raises(SettingsError, match="no number of steps"):
        steps_for_nfe("pndm", 3)

"""``sample(step_hook=)``: after step i the loop continues from the tensor the hook returns (what
4-channel inpainting's blend needs), for every registered sampler; the hook's own input is untouched."""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.sampling import sample
from diffusion_notes.samplers import SAMPLERS
from diffusion_notes.schedules import NoiseSchedule

SCHEDULE = NoiseSchedule.stable_diffusion()


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_the_loop_continues_from_the_hooks_result(sampler):
    x_T = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    replacement = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    inputs, step_starts = [], []

    def eps_model(x, t):
        inputs.append(x.clone())
        return 0.1 * x

    def hook(i, t, x, pred_x0):
        given.append(x.clone())
        return replacement.clone() if i == 0 else x * 1.0

    def callback(i, t, x, pred_x0):
        step_starts.append(len(inputs))
        seen.append(x.clone())

    given, seen = [], []
    sample(eps_model, x_T, SCHEDULE, sampler, steps=4, spacing="leading", callback=callback, step_hook=hook,
           generator=torch.Generator().manual_seed(2))
    assert torch.equal(seen[0], replacement)  # the callback sees the hooked latents
    # the first model evaluation of step 1 sees them too (multistep samplers keep only model outputs)
    assert torch.allclose(inputs[step_starts[0]], replacement, rtol=1e-12, atol=1e-12)
    assert not torch.equal(given[0], replacement)  # the hook got the sampler's own x


def test_a_hook_returning_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="step_hook must return a tensor of x's shape"):
        sample(lambda x, t: x, torch.zeros(1, 2, 3, 3), SCHEDULE, "ddim", steps=2,
               step_hook=lambda i, t, x, p: x[:, :1])

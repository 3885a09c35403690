"""Latent consistency distillation (``diffusion_notes/consistency_distillation.py``, LCM Alg. 1) and its use by
``scripts/distill_lcm_lora.py``: the loss equals a brute-force per-sample transcription of the formulas, its
gradient flows only through the student, the teacher's guided step is diffusers' ``DDIMScheduler.step`` on the
guided noise, and the skipping-step grid is diffusers' ``LCMScheduler`` distillation grid."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from diffusion_notes.consistency_distillation import (augmented_eps, consistency_distillation_loss,
                                                      guided_teacher_step, skipping_step_timesteps)
from diffusion_notes.schedules import NoiseSchedule

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


def _script():
    spec = importlib.util.spec_from_file_location("distill_lcm_lora", ROOT / "scripts" / "distill_lcm_lora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TinyUNet(torch.nn.Module):
    """A UNet-shaped stand-in, eps(x, t, context): a mix of x, t and the context's mean, in float64."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(0.3 * torch.randn(4, 4, generator=g, dtype=F64))
        self.a = torch.nn.Parameter(torch.randn(4, generator=g, dtype=F64))

    def forward(self, x, t, context):
        mixed = torch.einsum("oc,bchw->bohw", self.w, x)
        return torch.tanh(mixed + self.a.reshape(1, 4, 1, 1) * (t.to(F64).reshape(-1, 1, 1, 1) / 1000)
                          + context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1))


def _brute_force_loss(student, teacher, context, uncond, x0, noise, t_start, t_end, acp, s):
    """LCM Alg. 1 written out per sample with plain floats, detaching the target by hand."""
    total = 0.0
    for i in range(x0.shape[0]):
        ts, te = int(t_start[i]), int(t_end[i])
        a_s, a_e = float(acp[ts]), float(acp[te])
        x_t = math.sqrt(a_s) * x0[i:i + 1] + math.sqrt(1 - a_s) * noise[i:i + 1]
        e_c = teacher(x_t, t_start[i:i + 1], context[i:i + 1]).detach()
        e_u = teacher(x_t, t_start[i:i + 1], uncond[i:i + 1]).detach()
        e = (1 + (s - 1)) * e_c - (s - 1) * e_u  # LCM's omega = s - 1
        x_prev = math.sqrt(a_e) * (x_t - math.sqrt(1 - a_s) * e) / math.sqrt(a_s) + math.sqrt(1 - a_e) * e

        def f(x, t, a, eps):
            c_skip = 0.25 / ((10 * t) ** 2 + 0.25)
            c_out = 10 * t / math.sqrt((10 * t) ** 2 + 0.25)
            return c_skip * x + c_out * (x - math.sqrt(1 - a) * eps) / math.sqrt(a)

        target = f(x_prev, te, a_e, student(x_prev, t_end[i:i + 1], context[i:i + 1]).detach())
        online = f(x_t, ts, a_s, student(x_t, t_start[i:i + 1], context[i:i + 1]))
        total = total + ((online - target) ** 2).sum()
    return total / x0.numel()


def test_the_scripts_distillation_step_is_lcm_algorithm_1_written_out():
    """The script's wiring (student = target without gradient, teacher's two CFG branches in one batch) with the
    library loss, against the brute-force transcription: the loss and the student's gradient (1e-12)."""
    script = _script()
    student, teacher = TinyUNet(0), TinyUNet(1).requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(6, 4, 2, 2, generator=g, dtype=F64), torch.randn(6, 4, 2, 2, generator=g, dtype=F64)
    context, uncond = torch.randn(6, 5, 3, generator=g, dtype=F64), torch.randn(1, 5, 3, generator=g, dtype=F64)
    t_start, t_end = skipping_step_timesteps(6, g)
    t_start[0], t_end[0] = 19, 0  # the bottom of the grid, where c_skip(0) = 1
    acp = NoiseSchedule.stable_diffusion().alphas_cumprod.to(F64)
    eps = script.unet_eps(student, context)
    loss = consistency_distillation_loss(eps, eps, script.teacher_eps(teacher, context, uncond.expand_as(context)),
                                         x0, noise, t_start, t_end, acp, 7.5)
    grads = torch.autograd.grad(loss, list(student.parameters()))
    expected = _brute_force_loss(student, teacher, context, uncond.expand_as(context), x0, noise, t_start, t_end, acp, 7.5)
    expected_grads = torch.autograd.grad(expected, list(student.parameters()))
    assert loss.item() > 1e-4
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-15)
    for mine, theirs in zip(grads, expected_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-14)


def test_guided_teacher_step_equals_diffusers_ddim_step_on_the_guided_eps():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(50)  # step ratio 20: LCM's k
    acp = scheduler.alphas_cumprod.to(F64)  # diffusers' own float32 values: the test is about the step
    g = torch.Generator().manual_seed(4)
    for t in (999, 519, 39, 19):
        x, e_u, e_c = (torch.randn(2, 4, 3, 3, generator=g, dtype=F64) for _ in range(3))
        theirs = scheduler.step(e_u + 7.5 * (e_c - e_u), t, x).prev_sample  # t = 19 steps to "final_alpha_cumprod" = abar_0
        t_prev = max(t - 20, 0)
        mine = guided_teacher_step(x, e_u, e_c, float(acp[t]), float(acp[t_prev]), 7.5)
        assert (mine - theirs).abs().max() / theirs.abs().max() < 1e-6  # diffusers' step runs its scalars in float32
    torch.testing.assert_close(augmented_eps(e_u, e_c, 1.0), e_c)  # omega = 0: the conditional model


def test_skipping_step_grid_is_diffusers_lcm_distillation_grid():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    scheduler.set_timesteps(50, original_inference_steps=50)
    t_start, t_end = skipping_step_timesteps(4000, torch.Generator().manual_seed(5))
    assert set(t_start.tolist()) == set(scheduler.timesteps.tolist())  # all 50 levels t = 20 j - 1 are drawn
    assert torch.equal(t_end, (t_start - 20).clamp(min=0))

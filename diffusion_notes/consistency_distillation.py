r"""Latent consistency distillation: one training step of LCM (Luo et al. 2023, Algorithm 1), which LCM-LoRA
(Luo et al. 2023b) runs with only a LoRA of the UNet trainable.

A consistency model :math:`f_\theta(x, t) = c_{skip}(t)\,x + c_{out}(t)\,\hat x_0(x, t)`
(:func:`~diffusion_notes.samplers.lcm.consistency_function`) should map every point of one probability-flow ODE
trajectory to the same :math:`x_0`. Distillation enforces it between neighbours on a skipping-step grid
:math:`t_n = k\,n - 1` (:math:`k = T/N`, :math:`N = 50`, so one jump of the teacher spans :math:`k = 20` timesteps):

1. :math:`x_{t_{n+k}} = \sqrt{\bar\alpha_{t_{n+k}}}\,x_0 + \sqrt{1-\bar\alpha_{t_{n+k}}}\,\epsilon` (``q_sample``);
2. one DDIM step of the *teacher* from :math:`t_{n+k}` down to :math:`t_n` with classifier-free guidance folded in
   (LCM Sec. 4.2, the augmented PF-ODE), :math:`\tilde\epsilon = (1+\omega)\,\epsilon(x, c) - \omega\,\epsilon(x, \varnothing)`
   (``guidance_scale`` :math:`= 1 + \omega` in the CFG convention the package uses):
   :math:`\hat x_{t_n} = \sqrt{\bar\alpha_{t_n}}\,\hat x_0(\tilde\epsilon) + \sqrt{1-\bar\alpha_{t_n}}\,\tilde\epsilon`;
3. loss :math:`\lVert f_\theta(x_{t_{n+k}}, t_{n+k}) - f_{\theta^-}(\hat x_{t_n}, t_n)\rVert_2^2`, the target network
   :math:`\theta^-` without gradient (an EMA of :math:`\theta` in LCM; in LCM-LoRA and diffusers'
   ``train_lcm_distill_lora_sd_wds.py`` the student itself, EMA decay 0).

The functions take the networks as callables, ``eps(x, t) -> epsilon`` and ``teacher(x, t) -> (eps_uncond, eps_cond)``
with the conditioning already bound, so the same step serves the digits DDPM (``scripts/distill_consistency.py``) and
the miniature's LCM-LoRA (``scripts/distill_lcm_lora.py``). diffusers: ``train_lcm_distill_sd_wds.py``
(``DDIMSolver.ddim_step``, ``scalings_for_boundary_conditions``, ``w``).
"""

from __future__ import annotations

from typing import Callable

import torch

from .samplers.ddim import ddim_step
from .samplers.lcm import consistency_function

__all__ = ["skipping_step_timesteps", "augmented_eps", "guided_teacher_step", "consistency_distillation_loss"]


def skipping_step_timesteps(batch: int, generator: torch.Generator, original_inference_steps: int = 50,
                            num_train_timesteps: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(t_{n+k}, t_n)`` for a batch: :math:`t_{n+k} = k\,j - 1` with :math:`j \sim \mathcal U\{1..N\}` and
    :math:`t_n = \max(t_{n+k} - k, 0)`, :math:`k = T / N` (LCM Sec. 4.3, "skipping-step"; the grid of :func:`lcm_timesteps`)."""
    k = num_train_timesteps // original_inference_steps
    j = torch.randint(1, original_inference_steps + 1, (batch,), generator=generator)
    t_start = j * k - 1
    return t_start, (t_start - k).clamp(min=0)


def augmented_eps(eps_uncond, eps_cond, guidance_scale: float):
    r""":math:`\tilde\epsilon = (1+\omega)\,\epsilon_c - \omega\,\epsilon_\varnothing` with :math:`\omega` = ``guidance_scale`` - 1,
    i.e. :math:`\epsilon_\varnothing + s(\epsilon_c - \epsilon_\varnothing)` (LCM Sec. 4.2; Ho & Salimans 2022)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def guided_teacher_step(x_t, eps_uncond, eps_cond, a_t, a_prev, guidance_scale: float):
    r"""One DDIM step (Eq. 12, :math:`\eta = 0`) of the augmented PF-ODE from :math:`\bar\alpha_t` to :math:`\bar\alpha_{prev}`
    with :func:`augmented_eps` (LCM Alg. 1, the solver :math:`\Psi`); returns :math:`\hat x_{t_n}`."""
    return ddim_step(x_t, augmented_eps(eps_uncond, eps_cond, guidance_scale), a_t, a_prev)[0]


def consistency_distillation_loss(student: Callable, target: Callable, teacher: Callable, x0: torch.Tensor,
                                  noise: torch.Tensor, t_start: torch.Tensor, t_end: torch.Tensor,
                                  alphas_cumprod: torch.Tensor, guidance_scale: float,
                                  timestep_scaling: float = 10.0) -> torch.Tensor:
    r""":math:`\lVert f_\theta(x_{t_{n+k}}, t_{n+k}) - f_{\theta^-}(\hat x_{t_n}, t_n)\rVert^2`, averaged over elements
    (LCM Alg. 1, squared :math:`\ell_2` distance). ``t_start``, ``t_end``: integer timesteps (B,); ``x0``: clean
    (latent) samples; ``noise``: :math:`\epsilon` of step 1. Gradients flow only through ``student``."""
    shape = (-1,) + (1,) * (x0.dim() - 1)
    a_start, a_end = alphas_cumprod[t_start].reshape(shape), alphas_cumprod[t_end].reshape(shape)
    x_t = a_start**0.5 * x0 + (1 - a_start) ** 0.5 * noise
    with torch.no_grad():
        eps_uncond, eps_cond = teacher(x_t, t_start)
        x_prev = guided_teacher_step(x_t, eps_uncond, eps_cond, a_start, a_end, guidance_scale)
        f_target = consistency_function(x_prev, target(x_prev, t_end), a_end, t_end.to(x0.dtype).reshape(shape),
                                        timestep_scaling)[0]
    f_student = consistency_function(x_t, student(x_t, t_start), a_start, t_start.to(x0.dtype).reshape(shape),
                                     timestep_scaling)[0]
    return ((f_student - f_target) ** 2).mean()

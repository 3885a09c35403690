r"""One sampling loop for every sampler: start from :math:`x_T` and apply a step function S times.

The step functions live in :mod:`diffusion_notes.samplers` and are pure; this loop only decides
which timesteps to visit, looks up :math:`a_t, a_{prev}, \sigma_t`, draws noise, and keeps PLMS's
history. It is what CompVis's ``DDIMSampler.ddim_sampling`` / ``PLMSSampler.plms_sampling`` and
diffusers' ``for t in scheduler.timesteps: scheduler.step(...)`` loops do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .forward import predict_eps_from_z_and_v, predict_noise_from_start
from .noise import randn
from .samplers import (
    PRK_WARMUP_STEPS,
    SAMPLERS,
    ddim_sampling_parameters,
    ddim_step,
    ddpm_step,
    make_timesteps,
    plms_step,
    prk_step,
)
from .schedules import NoiseSchedule

__all__ = ["sample", "Trajectory", "model_output_to_eps", "PREDICTION_TYPES", "default_sampler_settings"]

#: What the network outputs: noise (DDPM, SD 1.x, SD 2 base), v (SD 2.x-768), or x0 itself.
PREDICTION_TYPES = ("eps", "v", "x0")


@dataclass
class Trajectory:
    """What CompVis returns as ``intermediates``: ``x[0]`` is :math:`x_T`, ``x[k]`` and ``pred_x0[k-1]``
    come from the k-th step, which started at timestep ``timesteps[k-1]``."""

    timesteps: list[int] = field(default_factory=list)
    x: list[torch.Tensor] = field(default_factory=list)
    pred_x0: list[torch.Tensor] = field(default_factory=list)


def model_output_to_eps(model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, prediction_type: str):
    r"""Turn any parameterisation into :math:`e_t`, the quantity every update rule here is written in.

    v: :math:`\hat\epsilon = \sqrt{\bar\alpha_t}v + \sqrt{1-\bar\alpha_t}x_t` (CompVis SD 2 ``predict_eps_from_z_and_v``);
    x0: :math:`\hat\epsilon = (x_t/\sqrt{\bar\alpha_t} - \hat x_0)/\sqrt{1/\bar\alpha_t - 1}`.
    """
    if prediction_type == "eps":
        return model_output
    if prediction_type == "v":
        return predict_eps_from_z_and_v(x, t, model_output, schedule)
    if prediction_type == "x0":
        return predict_noise_from_start(x, t, model_output, schedule)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, not {prediction_type!r}")


def default_sampler_settings(sampler: str) -> dict:
    """Defaults when ``spacing`` / ``set_alpha_to_one`` are not given.

    DDIM, PLMS and PNDM follow CompVis (``uniform`` spacing, last previous alpha = ``alphas_cumprod[0]``);
    DDPM uses ``leading`` spacing ending at t = 0 with :math:`\\bar\\alpha_{-1} = 1`: with ``steps = T`` that is
    every step from T-1 down to 0, as the paper's Algorithm 2 and CompVis's ``p_sample_loop`` do.
    """
    if sampler == "ddpm":
        return {"spacing": "leading", "set_alpha_to_one": True}
    return {"spacing": "uniform", "set_alpha_to_one": False}


def _check_timesteps(timesteps, T: int) -> np.ndarray:
    ts = np.asarray(timesteps, dtype=np.int64).reshape(-1)
    if ts.size == 0 or ts.min() < 0 or ts.max() >= T or np.any(np.diff(ts) < 0):
        raise ValueError(f"timesteps must be a non-empty ascending sequence of integers in [0, {T}), got {timesteps!r}")
    return ts


def sample(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    sampler: str = "plms",
    steps: int = 50,
    eta: float = 0.0,
    spacing: str | None = None,
    prediction_type: str = "eps",
    set_alpha_to_one: bool | None = None,
    steps_offset: int = 0,
    timesteps=None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
    return_trajectory: bool = False,
    ddpm_variance: str = "posterior",
    clip_denoised: bool = False,
):
    r"""Run a sampler from ``x_T`` down to :math:`x_0`; returns ``x_0`` or ``(x_0, Trajectory)``.

    * ``eps_model(x, t)``: the network (wrap it with :func:`diffusion_notes.guidance.guided_eps_model` for
      classifier-free guidance); ``t`` is an int64 tensor of shape (B,); it returns what the network
      predicts, named by ``prediction_type`` (``"eps"``, ``"v"`` or ``"x0"``).
    * ``sampler``: ``"ddpm"`` (ancestral, DDPM Alg. 2), ``"ddim"`` (DDIM Eq. 12, stochastic for eta > 0),
      ``"plms"`` (CompVis PLMS), ``"pndm"`` (PLMS after 3 pseudo Runge-Kutta steps).
    * ``steps`` and ``spacing`` pick the visited timesteps (:func:`~diffusion_notes.samplers.make_timesteps`),
      or pass ``timesteps`` (ascending) yourself, e.g. a truncated list for image-to-image.
    * ``set_alpha_to_one``: the previous alpha of the last step (see ``ddim_sampling_parameters``).
      Defaults per sampler: :func:`default_sampler_settings`.
    * ``generator``: the source of all noise (DDPM's z, DDIM's z when eta > 0); noise is drawn on the
      generator's device, so a CPU generator makes results device independent.
    * ``callback(i, t, x, pred_x0)`` is called after every step.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, not {sampler!r}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like noise), got {eta}")
    if eta != 0 and sampler != "ddim":
        raise ValueError(f"eta applies to the ddim sampler only ({sampler} has its own noise rule); got eta={eta}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, not {prediction_type!r}")
    defaults = default_sampler_settings(sampler)
    spacing = defaults["spacing"] if spacing is None else spacing
    set_alpha_to_one = defaults["set_alpha_to_one"] if set_alpha_to_one is None else set_alpha_to_one

    T = schedule.num_timesteps
    if timesteps is None:
        ddim_timesteps = make_timesteps(steps, T, spacing, steps_offset)
    else:
        ddim_timesteps = _check_timesteps(timesteps, T)
    ddim_alphas, ddim_alphas_prev, ddim_sigmas = ddim_sampling_parameters(schedule.alphas_cumprod, ddim_timesteps, eta, set_alpha_to_one)
    batch = x_T.shape[0]

    def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        t_in = torch.full((batch,), int(t), dtype=torch.long, device=x.device)
        return model_output_to_eps(eps_model(x, t_in), x, t_in, schedule, prediction_type)

    time_range = ddim_timesteps[::-1]
    total_steps = len(time_range)
    trajectory = Trajectory(x=[x_T]) if return_trajectory else None
    old_eps: list[torch.Tensor] = []
    x = x_T
    for i, t in enumerate(time_range):
        index = total_steps - i - 1
        a_t, a_prev, sigma_t = float(ddim_alphas[index]), float(ddim_alphas_prev[index]), float(ddim_sigmas[index])
        if sampler == "ddim":
            noise = randn(x.shape, generator, x.device, x.dtype) if eta > 0 else None
            x, pred_x0 = ddim_step(x, eps_fn(x, t), a_t, a_prev, sigma_t, noise)
        elif sampler == "ddpm":
            noise = randn(x.shape, generator, x.device, x.dtype) if index > 0 else None
            x, pred_x0 = ddpm_step(x, eps_fn(x, t), a_t, a_prev, noise, ddpm_variance, clip_denoised)
        elif sampler == "pndm" and i < PRK_WARMUP_STEPS:
            # At the very last step there is no next timestep to evaluate at: use 0 (documented in docs/conventions.md).
            t_prev = int(time_range[i + 1]) if i + 1 < total_steps else 0
            t_mid = int(t) - (int(t) - t_prev) // 2
            a_mid = float(schedule.alphas_cumprod[t_mid])
            x, pred_x0, e_t = prk_step(eps_fn, x, t, t_mid, t_prev, a_t, a_mid, a_prev)
            old_eps.append(e_t)
        else:  # plms, and pndm after its warm-up
            t_next = time_range[min(i + 1, total_steps - 1)]
            x, pred_x0, e_t = plms_step(eps_fn, x, t, t_next, a_t, a_prev, old_eps)
            old_eps.append(e_t)
            if len(old_eps) >= 4:  # Adams-Bashforth of order 4 needs only the last three
                old_eps.pop(0)
        if trajectory is not None:
            trajectory.timesteps.append(int(t))
            trajectory.x.append(x)
            trajectory.pred_x0.append(pred_x0)
        if callback is not None:
            callback(i, int(t), x, pred_x0)
    return (x, trajectory) if return_trajectory else x

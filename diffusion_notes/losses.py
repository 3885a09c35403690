r"""The training objective: DDPM's :math:`L_\text{simple}` and its x0 / v variants."""

from __future__ import annotations

from typing import Callable

import torch

from .forward import get_v, q_sample
from .schedules import NoiseSchedule

__all__ = ["training_target", "p_losses", "PARAMETERIZATIONS"]

PARAMETERIZATIONS = ("eps", "x0", "v")


def training_target(x0: torch.Tensor, noise: torch.Tensor, t, schedule: NoiseSchedule, parameterization: str = "eps"):
    r"""What the network is trained to output at :math:`x_t`: :math:`\epsilon`, :math:`x_0`, or
    :math:`v = \sqrt{\bar\alpha_t}\epsilon - \sqrt{1-\bar\alpha_t}x_0`. CompVis: the ``target`` in ``DDPM.p_losses``."""
    if parameterization == "eps":
        return noise
    if parameterization == "x0":
        return x0
    if parameterization == "v":
        return get_v(x0, noise, t, schedule)
    raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, not {parameterization!r}")


def p_losses(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    t,
    schedule: NoiseSchedule,
    noise: torch.Tensor | None = None,
    parameterization: str = "eps",
    **model_kwargs,
) -> torch.Tensor:
    r"""DDPM Eq. 14, :math:`L_\text{simple} = \mathbb E_{t,x_0,\epsilon}\,\|\epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\epsilon, t)\|^2`,
    as a mean over all elements, with the target swapped for :math:`x_0` or :math:`v` on request.

    ``model(x_t, t, **model_kwargs)`` returns the prediction. CompVis: ``DDPM.p_losses`` (with ``l_simple_weight=1``).
    """
    if noise is None:
        noise = torch.randn_like(x0)
    x_t = q_sample(x0, t, noise, schedule)
    target = training_target(x0, noise, t, schedule, parameterization)
    return torch.mean((model(x_t, t, **model_kwargs) - target) ** 2)

r"""Starting from an image: how far to noise it (strength), and how inpainting keeps the known region.

Image-to-image (SDEdit, Meng et al. 2022) encodes the image, noises its latents :math:`z_0` to an
intermediate level with DDPM Eq. 4, :math:`z_t = \sqrt{\bar\alpha_t} z_0 + \sqrt{1-\bar\alpha_t}\epsilon`,
and runs the last steps of the sampler from there. :func:`strength_timesteps` turns the strength into
those steps (CompVis's and diffusers' rules differ); :func:`strength_grids` gives the two grids a run
needs. Inpainting with an ordinary 4-channel model replaces the known region after every step
(:func:`blend_known_region`).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .checks import check_choice, check_real
from .errors import SettingsError
from .samplers import SamplingGrid

__all__ = ["check_strength", "strength_timesteps", "strength_grids", "noised", "blend_known_region", "NoDenoisingWarning",
           "STRENGTH_RULES"]

STRENGTH_RULES = ("compvis", "diffusers")


class NoDenoisingWarning(UserWarning):
    """The strength leaves no denoising step: the image comes back only encoded and decoded."""


def check_strength(strength, rule) -> None:
    """SettingsError unless ``strength`` is a number in [0, 1] and ``rule`` one of :data:`STRENGTH_RULES`
    (what :class:`~diffusion_notes.settings.Strength` checks when it is made)."""
    check_real("strength", strength, 0.0, 1.0, hint=" (0 keeps the image, 1 starts from pure noise)")
    check_choice("strength_rule", rule, STRENGTH_RULES)


def strength_timesteps(timesteps: np.ndarray, steps: int, strength: float, rule: str = "compvis"):
    r"""``(kept, t_noise)``: the timesteps img2img denoises over (ascending), and the one the image is noised to.

    ``strength`` in [0, 1] says how much of the way from the image to pure noise to go. The two codebases
    turn it into steps differently:

    * ``"compvis"`` (``scripts/img2img.py``, DDIM only there): ``t_enc = int(strength * ddim_steps)``;
      ``stochastic_encode`` noises to ``ddim_timesteps[t_enc]`` and ``decode`` then runs the ``t_enc``
      steps ``ddim_timesteps[:t_enc]``. The image is noised one visited timestep *above* the first step
      taken, and ``strength = 1`` asks for ``ddim_timesteps[ddim_steps]``, which does not exist
      (CompVis fails with an IndexError; here a ValueError).
    * ``"diffusers"`` (``StableDiffusionImg2ImgPipeline.get_timesteps``): ``init_timestep =
      min(int(steps * strength), steps)``, ``t_start = steps - init_timestep``; it runs the last
      ``init_timestep`` timesteps and noises to the first of them.
    """
    check_strength(strength, rule)
    if rule == "compvis":
        t_enc = int(strength * steps)
        if t_enc == 0:  # no step to take: keep the image un-noised, as "strength 0" promises
            return timesteps[:0], None
        if t_enc >= len(timesteps):
            raise SettingsError("strength_rule", f"strength {strength} with the compvis rule noises to timestep index "
                                f"{t_enc}, past the last of the {len(timesteps)} timesteps (CompVis fails here too); "
                                "use a strength below 1 or strength_rule='diffusers'.")
        return timesteps[:t_enc], int(timesteps[t_enc])
    init_timestep = min(int(steps * strength), steps)  # "diffusers"
    kept = timesteps[:init_timestep]
    return kept, (int(kept[-1]) if len(kept) else None)


def strength_grids(request, grid: SamplingGrid, warn: bool = True) -> tuple[SamplingGrid, SamplingGrid | None]:
    """The grid img2img denoises over (the last steps of ``grid``) and the grid whose first level the
    image is noised to (the same for the diffusers rule, one level higher for CompVis's; None: no noise).
    ``request``: a :class:`~diffusion_notes.settings.Request` with a strength."""
    strength, steps = request.strength, request.sampler.steps
    timesteps = grid.timesteps[:-1].flip(0).numpy()  # the visited timesteps, ascending
    kept, t_noise = strength_timesteps(timesteps, steps, strength.strength, strength.rule)
    n = len(kept)
    if n == 0 and warn:
        warnings.warn(f"strength {strength.strength} with the {strength.rule} rule and {steps} steps "
                      "leaves no denoising step: the image is returned only encoded and decoded; raise the strength "
                      "or the steps to change it", NoDenoisingWarning, stacklevel=5)
    if t_noise is None:
        return grid.last(n), None
    return grid.last(n), grid.last(n if strength.rule == "diffusers" else n + 1)


def noised(z0: torch.Tensor, noise_grid: SamplingGrid | None, noise: torch.Tensor) -> torch.Tensor:
    """``z0`` noised to the first level of ``noise_grid`` (DDPM Eq. 4); ``z0`` itself when there is no step to take."""
    if noise_grid is None:
        return z0
    return noise_grid.q_sample(z0, noise)


def blend_known_region(z0: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor, grid: SamplingGrid):
    """The step hook of 4-channel inpainting: after step ``i`` the next step starts from
    ``mask * x + (1 - mask) * known``, a new tensor (``x`` itself is not touched), where ``known`` is
    the image noised to the level step ``i`` went to, and ``z_0`` itself after the last step.
    CompVis's samplers (``mask=``, ``x0=``) blend *before* each step with fresh noise; diffusers blends
    *after* each step with the initial noise, as here (Song et al. 2021, score SDE App. I.2)."""

    def hook(i, t, x, pred_x0):
        known = grid.noised(i + 1, z0, noise) if i + 1 < grid.num_steps else z0  # the level step i went to
        return mask * x + (1 - mask) * known

    return hook

r"""Classifier-free guidance (Ho & Salimans 2022, Eq. 6), as CompVis and the seed write it.

.. math::
    e_t = e_{t,\text{uncond}} + s\,(e_{t,\text{cond}} - e_{t,\text{uncond}})

:math:`s` = ``unconditional_guidance_scale`` (diffusers: ``guidance_scale``). :math:`s = 1` is the plain
conditional model, :math:`s = 0` the unconditional one, :math:`s > 1` extrapolates away from the
unconditional prediction. A *negative prompt* is nothing more than replacing the unconditional
conditioning (the empty prompt '') by the negative prompt's features: the formula then pushes
away from it.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["classifier_free_guidance", "guided_eps_model", "rescale_guidance"]


def rescale_guidance(e_cfg: torch.Tensor, e_t: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    r"""Lin et al. 2023, Eq. 15-16: pull the guided prediction's per-sample standard deviation back to the
    conditional one's, then blend by :math:`\phi` = ``guidance_rescale``:

    .. math::
        x_{rescaled} = x_{cfg}\,rac{\mathrm{std}(x_{pos})}{\mathrm{std}(x_{cfg})},\qquad
        x_{final} = \phi\,x_{rescaled} + (1 - \phi)\,x_{cfg}

    (std over all but the batch dimension; :math:`\phi = 0.7` in the paper, 0 = plain guidance). It counters the
    over-exposure a large guidance scale causes on zero-terminal-SNR models. diffusers: ``rescale_noise_cfg``."""
    dims = list(range(1, e_t.dim()))
    std_pos = e_t.std(dim=dims, keepdim=True)
    std_cfg = e_cfg.std(dim=dims, keepdim=True)
    rescaled = e_cfg * (std_pos / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * e_cfg


def classifier_free_guidance(e_t_uncond: torch.Tensor, e_t: torch.Tensor, unconditional_guidance_scale: float,
                             guidance_rescale: float = 0.0) -> torch.Tensor:
    """Ho & Salimans 2022 Eq. 6, then (``guidance_rescale`` > 0) :func:`rescale_guidance`.
    CompVis: ``e_t_uncond + unconditional_guidance_scale * (e_t - e_t_uncond)`` in ``p_sample_ddim``/``p_sample_plms``;
    diffusers: ``noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)``."""
    e_cfg = e_t_uncond + unconditional_guidance_scale * (e_t - e_t_uncond)
    return rescale_guidance(e_cfg, e_t, guidance_rescale) if guidance_rescale else e_cfg


def _cat_conditioning(uc, c):
    if isinstance(c, dict):
        return {k: _cat_conditioning(uc[k], c[k]) for k in c}
    return torch.cat([uc, c])


def guided_eps_model(
    model: Callable[..., torch.Tensor], c, uc, unconditional_guidance_scale: float, guidance_rescale: float = 0.0
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    r"""Wrap ``model(x, t, c)`` into ``eps_model(x, t)`` applying classifier-free guidance in ONE batched call.

    As in CompVis: ``x_in = cat([x] * 2)``, ``t_in = cat([t] * 2)``, ``c_in = cat([uc, c])``, then
    ``e_t_uncond, e_t = model(x_in, t_in, c_in).chunk(2)``. ``c``/``uc`` are tensors, or dicts of tensors
    (SDXL's context plus pooled/size vector). With ``uc=None`` or scale 1 the model is called once on ``c``.
    The wrapped model returns whatever the network predicts (eps or v): the formula is linear, so
    guiding v and converting afterwards equals converting first. ``guidance_rescale`` (:math:`\phi`) applies
    :func:`rescale_guidance` to the guided output (as diffusers does, to eps or v).
    """

    guided = uc is not None and unconditional_guidance_scale != 1.0
    c_in = _cat_conditioning(uc, c) if guided else c  # built once, not at every step

    def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not guided:
            return model(x, t, c)
        x_in = torch.cat([x] * 2)
        t_in = torch.cat([t] * 2)
        e_t_uncond, e_t = model(x_in, t_in, c_in).chunk(2)
        return classifier_free_guidance(e_t_uncond, e_t, unconditional_guidance_scale, guidance_rescale)

    return eps_model

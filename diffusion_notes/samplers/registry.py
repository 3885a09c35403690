r"""The sampler registry: every sampler is a function that owns its loop, registered with its name.

A sampler family's module (``ddim.py``, ``euler.py``, ...) decorates each of its loop functions with
:func:`register`; :func:`diffusion_notes.sampling.sample` looks the name up in :data:`SAMPLERS`,
validates the options against the spec, builds the grid and runs the function. The command line's
``--sampler`` choices, the pipeline's AUTOMATIC1111 labels and the docs table are read from here, so
adding a sampler is one new module in ``samplers/`` (plus its tests): ``samplers/__init__.py`` imports
every module of the folder. :func:`markdown_table` writes the table of registered samplers that
``docs/formulas.md`` carries (a test keeps the two equal).

The loop function's signature (k-diffusion style, ``sample_euler(model, x, sigmas, ...)``)::

    fn(model, x, grid, noise, **options) -> Iterator[Step]

* ``model(x, t)``: the noise prediction :math:`\hat\epsilon(x_t, t)` at a real-valued timestep ``t``
  (a Python float), already guided and converted from v / x0 by :func:`~diffusion_notes.sampling.sample`;
* ``x``: :math:`x_T`, in the variance-preserving scale (the scale of the UNet's input);
* ``grid``: the :class:`~diffusion_notes.samplers.grid.SamplingGrid` (levels ``0..N``, end point included);
* ``noise()``: a fresh :math:`z \sim \mathcal N(0, I)` shaped like ``x``, from the run's generator;
* it yields one :class:`Step` per grid step, in the variance-preserving scale, and continues from the
  very tensor it yielded (a caller may change it in place: inpainting blends the known region so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterator, Mapping

import torch

__all__ = ["SAMPLERS", "SamplerSpec", "Step", "register", "markdown_table"]


@dataclass(frozen=True)
class Step:
    """What a sampler yields after step ``i`` (from grid level ``i`` to ``i + 1``).

    ``t`` and ``sigma``: the level the step started from; ``x``: :math:`x` at level ``i + 1`` (variance
    preserving); ``pred_x0``: the step's estimate of :math:`x_0` (k-diffusion's ``denoised``)."""

    i: int
    t: float
    sigma: float
    x: torch.Tensor
    pred_x0: torch.Tensor


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    * ``name``: the key (``"dpmpp_2m"``); ``label``: AUTOMATIC1111's name (``"DPM++ 2M"``), written into
      the PNG ``parameters`` chunk (with the σ schedule appended, e.g. ``"DPM++ 2M Karras"``);
    * ``options``: every option the sampler takes, with its default (read-only mapping);
    * ``stochastic``: whether it draws noise (with its default options);
    * ``fn``: the loop function (see the module docstring); ``description``: one line for ``--help``;
    * ``choices``: the allowed values of its string options (``{"ddpm_variance": ("posterior", "beta")}``);
    * ``grid_defaults``: its default ``spacing``, ``steps_offset`` and ``set_alpha_to_one`` (the grid's
      end point), applied by :class:`~diffusion_notes.sampling.SamplerSettings` when those are None.
    """

    name: str
    label: str
    options: Mapping[str, object]
    stochastic: bool
    fn: Callable[..., Iterator[Step]]
    description: str
    grid_defaults: Mapping[str, object] = field(default_factory=dict)
    choices: Mapping[str, tuple] = field(default_factory=dict)


#: name -> :class:`SamplerSpec`, in registration order (CompVis's four first, then the σ samplers).
SAMPLERS: dict[str, SamplerSpec] = {}

#: the grid defaults of a sampler that names none: CompVis's (uniform spacing, SD's steps_offset = 1,
#: last previous alpha = alphas_cumprod[0]).
COMPVIS_GRID = MappingProxyType({"spacing": "uniform", "steps_offset": 1, "set_alpha_to_one": False})

#: the σ samplers' grid: S timesteps from T-1 down to 0, then σ = 0 (k-diffusion and AUTOMATIC1111).
SIGMA_GRID = MappingProxyType({"spacing": "linspace", "steps_offset": 1, "set_alpha_to_one": True})


def register(name: str, label: str, description: str, *, options: Mapping[str, object] | None = None,
             stochastic: bool = False, grid_defaults: Mapping[str, object] = COMPVIS_GRID,
             choices: Mapping[str, tuple] | None = None):
    """Decorator: ``@register("euler", "Euler", "Karras Alg. 2 without churn")`` above a loop function."""

    def decorate(fn):
        if name in SAMPLERS:
            raise ValueError(f"a sampler named {name!r} is already registered ({SAMPLERS[name].fn.__module__})")
        SAMPLERS[name] = SamplerSpec(name, label, MappingProxyType(dict(options or {})), stochastic, fn, description,
                                     MappingProxyType(dict(grid_defaults)), MappingProxyType(dict(choices or {})))
        return fn

    return decorate


def markdown_table() -> str:
    """The registered samplers as a markdown table: name, AUTOMATIC1111 label, options, kind, description."""
    rows = ["| sampler | A1111 label | options (defaults) | kind | what it is |", "|---|---|---|---|---|"]
    for spec in SAMPLERS.values():
        options = ", ".join(f"`{k}={v!r}`" for k, v in spec.options.items()) or "(none)"
        kind = "stochastic" if spec.stochastic else "deterministic"
        description = spec.description.replace("|", "\\|")
        rows.append(f"| `{spec.name}` | {spec.label} | {options} | {kind} | {description} |")
    return "\n".join(rows)

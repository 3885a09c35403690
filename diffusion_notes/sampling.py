r"""One entry point for every sampler: validate the settings once, build the grid, run the registered loop.

:class:`SamplerSettings` holds every choice a user makes about sampling (the sampler, the number of
steps, the σ schedule, the timestep spacing and the sampler's own options) and checks itself when
made; what needs the schedule (steps within its length) is checked when the grid is built.
:func:`sample` takes a grid, or a schedule and the settings to build one: it builds the
:class:`~diffusion_notes.samplers.grid.SamplingGrid` (the visited timesteps, their :math:`\bar\alpha`
and :math:`\sigma`, end point included), wraps the network into the function every sampler calls
(real-valued timesteps, v / x0 outputs converted to :math:`\hat\epsilon`, shape and NaN checks) and
runs the sampler's own loop from :data:`~diffusion_notes.samplers.SAMPLERS`. What CompVis's
``DDIMSampler.ddim_sampling`` / ``PLMSSampler.plms_sampling``, diffusers'
``for t in scheduler.timesteps: scheduler.step(...)`` and k-diffusion's ``sample_*`` loops do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Callable, Mapping

import torch

from .errors import SettingsError
from .noise import randn
from .samplers import SAMPLERS, SIGMA_SCHEDULES, SPACINGS, SamplingGrid, build_grid
from .schedules import NoiseSchedule

__all__ = ["sample", "SamplerSettings", "Trajectory", "model_output_to_eps", "PREDICTION_TYPES",
           "default_sampler_settings", "GRID_OPTIONS", "NO_OP_VALUES", "eps_from_output"]

#: What the network outputs: noise (DDPM, SD 1.x, SD 2 base), v (SD 2.x-768), or x0 itself.
PREDICTION_TYPES = ("eps", "v", "x0")

#: Options every sampler takes, because they shape the grid rather than the update rule.
GRID_OPTIONS = ("set_alpha_to_one",)

#: Options whose value here makes them do nothing. A sampler without such an option accepts it at that
#: value (and drops it): CompVis's ``scripts/txt2img.py`` always passes ``eta=opt.ddim_eta`` (default 0)
#: to ``PLMSSampler.sample``, which accepts 0 and refuses anything else; any other value is refused here too.
NO_OP_VALUES = {"eta": 0.0}

#: AUTOMATIC1111 appends the σ schedule to the sampler's label ("DPM++ 2M Karras").
_SCHEDULE_LABELS = {"default": "", "karras": " Karras", "exponential": " Exponential"}


@dataclass
class Trajectory:
    """What CompVis returns as ``intermediates``: ``x[0]`` is :math:`x_T`, ``x[k]`` and ``pred_x0[k-1]``
    come from the k-th step, which started at timestep ``timesteps[k-1]``."""

    timesteps: list = field(default_factory=list)
    x: list[torch.Tensor] = field(default_factory=list)
    pred_x0: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class SamplerSettings:
    """Every sampling choice, with its default, checked once when the object is made.

    * ``sampler``: a key of :data:`~diffusion_notes.samplers.SAMPLERS` (``"plms"``, ``"ddim"``, ``"euler_a"``, ...);
    * ``steps``: the number of steps S (model evaluations per step depend on the sampler);
    * ``sigma_schedule``: ``"default"`` (the model's own levels at the ``spacing``'s timesteps),
      ``"karras"`` (Karras et al. 2022 Eq. 5, ρ = 7) or ``"exponential"``;
    * ``spacing`` / ``steps_offset``: the visited timesteps of the default σ schedule
      (:func:`~diffusion_notes.samplers.make_timesteps`); None = the sampler's default
      (its ``SamplerSpec.grid_defaults``: CompVis ``uniform`` for DDIM/PLMS/PNDM, ``leading`` with
      ``steps_offset = 0`` for DDPM, ``linspace`` for the σ samplers; ``steps_offset = 1`` (SD's configs) otherwise);
    * ``options``: the sampler's own options (``eta``, ``ddpm_variance``, ``clip_denoised``, ``s_noise``, ...)
      and ``set_alpha_to_one`` (the grid's end point: :math:`\\sigma = 0` or :math:`\\bar\\alpha_0`);
      unspecified ones take the sampler's defaults (``SamplerSpec.options``);
    * ``quantize``: evaluate the model at the nearest trained (integer) timestep instead of the
      real-valued one (k-diffusion's ``DiscreteEpsDDPMDenoiser(quantize=True)``; diffusers' DPM-Solver
      and UniPC round their Karras timesteps so); may also be given as ``options={"quantize": True}``.
    """

    sampler: str = "plms"
    steps: int = 50
    sigma_schedule: str = "default"
    spacing: str | None = None
    steps_offset: int | None = None
    options: Mapping[str, object] = field(default_factory=dict)
    quantize: bool = False

    def __post_init__(self):
        options = dict(self.options)
        if "quantize" in options:  # accepted among the options too (the pipeline's sampler_options)
            object.__setattr__(self, "quantize", options.pop("quantize"))
        if self.sampler not in SAMPLERS:
            raise SettingsError("sampler", f"sampler must be one of {', '.join(SAMPLERS)}, not {self.sampler!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise SettingsError("steps", f"the number of sampling steps must be an integer from 1 or more, got {self.steps!r}")
        if self.sigma_schedule not in SIGMA_SCHEDULES:
            raise SettingsError("sigma_schedule", f"sigma_schedule must be one of {', '.join(SIGMA_SCHEDULES)}, not {self.sigma_schedule!r}")
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise SettingsError("spacing", f"unknown timestep spacing {self.spacing!r}; choose one of {', '.join(SPACINGS)}")
        if self.steps_offset is not None and (isinstance(self.steps_offset, bool) or not isinstance(self.steps_offset, int) or self.steps_offset < 0):
            raise SettingsError("steps_offset", f"steps_offset must be an integer >= 0 (SD's configs use 1), got {self.steps_offset!r}")
        if not isinstance(self.quantize, bool):
            raise SettingsError("quantize", f"quantize must be True or False, got {self.quantize!r}")
        spec = SAMPLERS[self.sampler]
        for name, value in list(options.items()):
            if name in GRID_OPTIONS:
                _check_option_value(name, value, False, ())
            elif name in spec.options:
                _check_option_value(name, value, spec.options[name], spec.choices.get(name, ()))
            elif name in NO_OP_VALUES and _is_value(value, NO_OP_VALUES[name]):
                del options[name]  # e.g. CompVis's eta = 0 passed to PLMS: accepted, and nothing to do
            else:
                takers = [s.name for s in SAMPLERS.values() if name in s.options]
                also = f" (and to {', '.join(takers[1:])})" if len(takers) > 1 else ""
                where = f"{name} applies to the {takers[0]} sampler only{also}; " if takers else f"no sampler takes an option {name!r}; "
                taken = ", ".join([*spec.options, *GRID_OPTIONS])
                noop = f" ({name}={NO_OP_VALUES[name]:g} is accepted: it changes nothing)" if name in NO_OP_VALUES else ""
                raise SettingsError(name, f"{where}the {self.sampler} sampler takes {taken}{noop}")
        object.__setattr__(self, "options", MappingProxyType(options))

    @property
    def spec(self):
        return SAMPLERS[self.sampler]

    def check_steps(self, num_train_timesteps: int) -> None:
        """SettingsError unless ``steps`` is at most the schedule's length (``num_train_timesteps``)."""
        if self.steps > num_train_timesteps:
            raise SettingsError("steps", f"the number of sampling steps must be an integer from 1 to "
                                f"{num_train_timesteps} (the schedule's length), got {self.steps!r}")

    def resolved(self) -> "SamplerSettings":
        """A copy with every None and every unspecified option replaced by the sampler's default."""
        grid_defaults = self.spec.grid_defaults
        options = {**self.spec.options, "set_alpha_to_one": grid_defaults["set_alpha_to_one"], **self.options}
        return replace(self, spacing=self.spacing or grid_defaults["spacing"],
                       steps_offset=grid_defaults["steps_offset"] if self.steps_offset is None else self.steps_offset,
                       options=options)

    @property
    def label(self) -> str:
        """AUTOMATIC1111's sampler name for the PNG ``parameters`` chunk, schedule included ("DPM++ 2M Karras")."""
        return self.spec.label + _SCHEDULE_LABELS[self.sigma_schedule]

    def grid(self, schedule, timesteps=None) -> SamplingGrid:
        """The validated settings' grid on ``schedule`` (a ``NoiseSchedule`` or its ``alphas_cumprod``)."""
        acp = getattr(schedule, "alphas_cumprod", schedule)
        self.check_steps(len(acp))
        r = self.resolved()
        try:
            return build_grid(acp, r.steps, r.spacing, r.sigma_schedule, r.steps_offset, r.options["set_alpha_to_one"],
                              timesteps)
        except ValueError as err:  # e.g. CompVis 'uniform' past the end: the message names what works
            raise SettingsError("timesteps" if timesteps is not None else "steps", str(err)) from None

    def sampler_options(self) -> dict:
        """The options handed to the sampler's loop function (the grid options removed)."""
        r = self.resolved()
        return {k: v for k, v in r.options.items() if k not in GRID_OPTIONS}


def _is_value(value, expected: float) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value == expected


def _check_option_value(name: str, value, default, choices) -> None:
    if choices:
        if value not in choices:
            raise SettingsError(name, f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            raise SettingsError(name, f"{name} must be True or False, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SettingsError(name, f"{name} must be a positive integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            hint = " (0 = deterministic, 1 = the full ancestral/DDPM noise)" if name == "eta" else ""
            raise SettingsError(name, f"{name} must be >= 0 and finite{hint}, got {value!r}")


def default_sampler_settings(sampler: str) -> dict:
    """``spacing``, ``steps_offset`` and ``set_alpha_to_one`` when not given: the sampler's ``grid_defaults``."""
    return dict(SamplerSettings(sampler).spec.grid_defaults)


def eps_from_output(model_output: torch.Tensor, x: torch.Tensor, a_t, prediction_type: str) -> torch.Tensor:
    r"""Turn any parameterisation into :math:`e_t`, the quantity every update rule here is written in,
    at the level whose :math:`\bar\alpha_t` is ``a_t`` (a float, or a tensor broadcasting against ``x``):

    * v: :math:`\hat\epsilon = \sqrt{\bar\alpha_t}v + \sqrt{1-\bar\alpha_t}x_t` (Salimans & Ho 2022, App. D;
      CompVis SD 2 ``predict_eps_from_z_and_v``);
    * x0: :math:`\hat\epsilon = (x_t/\sqrt{\bar\alpha_t} - \hat x_0)/\sqrt{1/\bar\alpha_t - 1}` (DDPM Eq. 4 solved
      for :math:`\epsilon`; CompVis ``predict_noise_from_start``).
    """
    if prediction_type == "eps":
        return model_output
    if prediction_type == "v":
        return a_t**0.5 * model_output + (1 - a_t) ** 0.5 * x
    if prediction_type == "x0":
        return (x / a_t**0.5 - model_output) / (1 / a_t - 1) ** 0.5
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, not {prediction_type!r}")


def model_output_to_eps(model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, prediction_type: str):
    r""":func:`eps_from_output` at integer timesteps ``t`` (B,) of ``schedule``: :math:`\bar\alpha_t` looked up per sample."""
    a_t = schedule.alphas_cumprod.to(x.device)[t.long()].reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return eps_from_output(model_output, x, a_t, prediction_type)


def _as_number(t: float):
    return int(t) if float(t).is_integer() else float(t)


def _model_function(eps_model, x_T: torch.Tensor, grid: SamplingGrid, prediction_type: str, quantize: bool, progress: dict):
    """``model(x, t)`` for the samplers: real t (a float) -> a (B,) float tensor, quantized on request,
    the output checked (shape, finiteness) and converted to :math:`\\hat\\epsilon`."""
    T = len(grid.train_alphas_cumprod)
    t_dtype = x_T.dtype if x_T.dtype in (torch.float32, torch.float64) else torch.float32

    def model(x: torch.Tensor, t: float) -> torch.Tensor:
        t_model = min(max(round(t), 0), T - 1) if quantize else t
        t_in = torch.full((x.shape[0],), float(t_model), dtype=t_dtype, device=x.device)
        out = eps_model(x, t_in)
        if tuple(out.shape) != tuple(x.shape):
            raise ValueError(f"the model returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)}; "
                             "it must return one prediction per input value (same shape)")
        if not torch.isfinite(out).all():
            raise FloatingPointError(f"the model output contains NaN/inf at step {progress['step']} (timestep {_as_number(t_model)}); "
                                     "in fp16 try float32 or upcast_attention")
        # v / x0 -> eps at the real level t, where x is x_t (also when quantize showed the network round(t);
        # diffusers' DPM-Solver converts with its real Karras sigma likewise)
        return out if prediction_type == "eps" else eps_from_output(out, x, grid.alpha_at(t), prediction_type)

    return model


def sample(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_T: torch.Tensor,
    schedule: NoiseSchedule | SamplingGrid,
    sampler: str | None = None,
    steps: int | None = None,
    *,
    settings: SamplerSettings | None = None,
    prediction_type: str = "eps",
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    step_hook: Callable | None = None,
    return_trajectory: bool = False,
    **options,
):
    r"""Run a sampler from ``x_T`` down the grid; returns ``x_0`` or ``(x_0, Trajectory)``.

    * ``eps_model(x, t)``: the network (wrap it with :func:`diffusion_notes.guidance.guided_eps_model` for
      classifier-free guidance); ``t`` is a float tensor of shape (B,) holding a real-valued timestep
      (integer-valued on the default σ schedule; rounded to the nearest trained one with ``quantize``);
      it returns what the network predicts, named by ``prediction_type`` (``"eps"``, ``"v"`` or ``"x0"``).
    * ``schedule``: the :class:`~diffusion_notes.schedules.NoiseSchedule`, whose grid the settings build;
      or a :class:`~diffusion_notes.samplers.SamplingGrid` itself (e.g. ``grid.last(n)`` for
      image-to-image, or ``SamplerSettings(...).grid(schedule, timesteps=...)`` for timesteps of your own).
    * the sampler: ``sampler`` (default ``"plms"``), ``steps`` (default 50) and any other field or option of
      :class:`SamplerSettings` as keywords (``sigma_schedule``, ``spacing``, ``steps_offset``, ``quantize``,
      ``eta``, ``set_alpha_to_one``, ``ddpm_variance``, ...); or ``settings=SamplerSettings(...)`` instead of
      all of them. A bad value, or an option the sampler does not take, is a
      :class:`~diffusion_notes.errors.SettingsError`.
    * ``generator``: the source of all noise; drawn on the generator's device, so a CPU generator makes
      results device independent.
    * ``callback(i, t, x, pred_x0)`` is called after every step (``t``: the level the step started from).
    * ``step_hook(i, t, x, pred_x0) -> x'``, called after every step before ``callback``, returns the
      latents the sampler continues from (e.g. inpainting's blend of the known region); a new tensor
      of ``x``'s shape, which the loop then carries on from (``x`` itself is overwritten with it).
    """
    if settings is None:
        settings = _settings_from_keywords(sampler, steps, options)
    elif sampler is not None or steps is not None or options:
        raise SettingsError("settings", "pass either settings=SamplerSettings(...) or the separate sampler arguments, not both")
    if prediction_type not in PREDICTION_TYPES:
        raise SettingsError("prediction_type", f"prediction_type must be one of {PREDICTION_TYPES}, not {prediction_type!r}")
    grid = schedule if isinstance(schedule, SamplingGrid) else settings.grid(schedule)

    progress = {"step": 0}
    model = _model_function(eps_model, x_T, grid, prediction_type, settings.quantize, progress)
    noise = lambda: randn(x_T.shape, generator, x_T.device, x_T.dtype)  # noqa: E731
    trajectory = Trajectory(x=[x_T]) if return_trajectory else None
    x = x_T
    for step in settings.spec.fn(model, x_T, grid, noise, **settings.sampler_options()):
        x = step.x
        t = _as_number(step.t)
        if step_hook is not None:
            hooked = step_hook(step.i, t, x, step.pred_x0)
            if not isinstance(hooked, torch.Tensor) or hooked.shape != x.shape:
                raise ValueError(f"step_hook must return a tensor of x's shape {tuple(x.shape)}, got "
                                 f"{getattr(hooked, 'shape', type(hooked).__name__)}")
            x.copy_(hooked)  # the registered loop continues from the tensor it yielded
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"the {settings.sampler} sampler's x became NaN/inf at step {step.i} (timestep {t})")
        if trajectory is not None:
            trajectory.timesteps.append(t)
            trajectory.x.append(x)
            trajectory.pred_x0.append(step.pred_x0)
        if callback is not None:
            callback(step.i, t, x, step.pred_x0)
        progress["step"] = step.i + 1
    return (x, trajectory) if return_trajectory else x


#: The keywords of :func:`sample` that are fields of :class:`SamplerSettings`; every other keyword is a sampler option.
_SETTINGS_FIELDS = ("sigma_schedule", "spacing", "steps_offset", "quantize")


def _settings_from_keywords(sampler, steps, options: dict) -> SamplerSettings:
    fields = {k: options.pop(k) for k in _SETTINGS_FIELDS if k in options}
    options = {k: v for k, v in options.items() if v is not None}  # None: the sampler's default
    return SamplerSettings(SamplerSettings.sampler if sampler is None else sampler,
                           SamplerSettings.steps if steps is None else steps, options=options,
                           **{k: v for k, v in fields.items() if v is not None})

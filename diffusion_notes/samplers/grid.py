r"""The grid a sampler walks: its visited timesteps, their :math:`\bar\alpha` and :math:`\sigma`, end point included.

A sampler run of N steps visits the levels ``0, 1, ..., N``: level ``i`` has a timestep :math:`t_i`
(real-valued when a σ schedule asks for it), :math:`\bar\alpha_i` and
:math:`\sigma_i = \sqrt{(1-\bar\alpha_i)/\bar\alpha_i}` (the noise level of :math:`\bar x = x_t/\sqrt{\bar\alpha_t}`,
Karras et al. 2022). Step ``i`` goes from level ``i`` to level ``i + 1``; level ``N`` is the end point:
:math:`\sigma = 0` (:math:`\bar\alpha = 1`, written as timestep -1, the :math:`\bar\alpha_{-1} = 1` of
``alphas_cumprod_prev``) or, CompVis's choice for DDIM/PLMS, :math:`\bar\alpha_0` (timestep 0).
So no sampler needs ``index = total_steps - i - 1`` nor a special last step to know where it goes.

σ schedules (which noise levels to visit):

* ``"default"``: the model's own discretisation, :math:`\sigma_i = \sigma(t_i)` at the timesteps of the
  ``spacing`` (:func:`~diffusion_notes.samplers.timesteps.make_timesteps`);
* ``"karras"``: Karras et al. 2022 Eq. 5, :math:`\sigma_i = \big(\sigma_{max}^{1/\rho} + \frac{i}{N-1}(\sigma_{min}^{1/\rho} - \sigma_{max}^{1/\rho})\big)^\rho`, :math:`\rho = 7`;
* ``"exponential"``: :math:`\log\sigma_i` uniform from :math:`\log\sigma_{max}` to :math:`\log\sigma_{min}`;

with :math:`\sigma_{max} = \sigma(T-1)` and :math:`\sigma_{min} = \sigma(0)`, the trained range (k-diffusion and
AUTOMATIC1111; diffusers' DPM-Solver and UniPC). The timestep of a real σ is found by interpolating
:math:`\log\sigma` linearly between the two neighbouring trained timesteps (diffusers ``_sigma_to_t``,
k-diffusion ``DiscreteSchedule.sigma_to_t``); the same interpolation gives :math:`\sigma(t)` at a
fractional t (k-diffusion ``t_to_sigma``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .timesteps import make_timesteps

__all__ = ["SIGMA_SCHEDULES", "SamplingGrid", "build_grid", "karras_sigmas", "exponential_sigmas", "sigma_to_t",
           "t_to_sigma", "ZERO_SNR_ALPHA_CUMPROD"]

SIGMA_SCHEDULES = ("default", "karras", "exponential")

#: :math:`\bar\alpha_{T-1} = 0` (a zero-terminal-SNR schedule) has :math:`\sigma = \infty`; it is replaced by
#: :math:`2^{-24}` on the grid, as diffusers' Euler, DPM-Solver and UniPC schedulers do (``rescale_betas_zero_snr``).
ZERO_SNR_ALPHA_CUMPROD = 2.0**-24


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> torch.Tensor:
    r"""Karras et al. 2022 Eq. 5 (Table 1, :math:`\rho = 7`), n values from ``sigma_max`` down to ``sigma_min``, float64.

    k-diffusion: ``get_sigmas_karras`` (which also appends 0); diffusers: ``_convert_to_karras``."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> torch.Tensor:
    r""":math:`\sigma_i = \exp\big(\log\sigma_{max} + \frac{i}{n-1}(\log\sigma_{min} - \log\sigma_{max})\big)`, float64.

    k-diffusion: ``get_sigmas_exponential``; diffusers: ``_convert_to_exponential``."""
    return torch.linspace(np.log(sigma_max), np.log(sigma_min), n, dtype=torch.float64).exp()


def t_to_sigma(t, train_sigmas: torch.Tensor) -> torch.Tensor:
    r""":math:`\sigma(t)` at real timesteps: the table at integers, :math:`\log\sigma` interpolated linearly between.

    k-diffusion ``DiscreteSchedule.t_to_sigma``. (diffusers' Euler interpolates :math:`\sigma` itself linearly,
    ``np.interp(timesteps, arange, sigmas)``, when its ``linspace`` spacing gives fractional timesteps.)"""
    t = torch.as_tensor(t, dtype=torch.float64)
    low = t.floor().clamp(0, len(train_sigmas) - 1).long()
    high = (low + 1).clamp(max=len(train_sigmas) - 1)
    w = t - low
    log_sigmas = train_sigmas.log()
    interpolated = ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()
    return torch.where(w == 0, train_sigmas[low], interpolated)


def sigma_to_t(sigma, train_sigmas: torch.Tensor) -> torch.Tensor:
    r"""The real timestep of a noise level: :math:`t = i + w`, :math:`w = \frac{\log\sigma - \log\sigma_i}{\log\sigma_{i+1} - \log\sigma_i}`
    for :math:`\sigma_i \le \sigma < \sigma_{i+1}`, clipped to [0, T-1] (diffusers ``_sigma_to_t``, k-diffusion ``sigma_to_t``)."""
    log_sigmas = train_sigmas.log()
    log_sigma = torch.as_tensor(sigma, dtype=torch.float64).clamp(min=1e-10).log()
    low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, len(log_sigmas) - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
    return low + w


@dataclass(frozen=True)
class SamplingGrid:
    r"""The levels ``0..N`` of one sampler run, in the order visited, as float64 tensors of length N + 1.

    ``timesteps[i]``, ``alphas_cumprod[i]`` (:math:`\bar\alpha_i`) and ``sigmas[i]`` (:math:`\sigma_i`);
    ``timesteps[N]`` is the end point (-1 for :math:`\sigma = 0`). ``train_alphas_cumprod``: the model's
    table, for noise levels between the grid's (PNDM's midpoints, DPM++ 2S's intermediate σ).
    """

    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor
    sigmas: torch.Tensor
    train_alphas_cumprod: torch.Tensor

    @property
    def num_steps(self) -> int:
        return len(self.timesteps) - 1

    @property
    def train_sigmas(self) -> torch.Tensor:
        return ((1 - self.train_alphas_cumprod) / self.train_alphas_cumprod).sqrt()

    def last(self, n: int) -> "SamplingGrid":
        """The grid of the last ``n`` steps (``n + 1`` levels): image-to-image starts part-way down."""
        if not 0 <= n <= self.num_steps:
            raise ValueError(f"can keep 0 to {self.num_steps} of this grid's steps, not {n}")
        k = self.num_steps - n
        return SamplingGrid(self.timesteps[k:], self.alphas_cumprod[k:], self.sigmas[k:], self.train_alphas_cumprod)

    def noised(self, i: int, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        r""":math:`\sqrt{\bar\alpha_i}\,x_0 + \sqrt{1-\bar\alpha_i}\,\epsilon` at level ``i`` (DDPM Eq. 4, ``q_sample``)."""
        a = float(self.alphas_cumprod[i])
        return a**0.5 * x0 + (1 - a) ** 0.5 * noise

    def q_sample(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x0`` noised to the grid's first level, where the run starts (image-to-image)."""
        return self.noised(0, x0, noise)

    def alpha_at(self, t) -> float:
        r""":math:`\bar\alpha` at any real timestep of the trained range (the table at integers)."""
        if float(t) < 0:  # the end point sigma = 0 (timestep -1, alphas_cumprod_prev[0] = 1)
            return 1.0
        sigma = float(t_to_sigma(t, self.train_sigmas))
        return float(self.train_alphas_cumprod[int(t)]) if float(t) == int(t) else 1 / (1 + sigma**2)

    def t_at_sigma(self, sigma) -> float:
        """The real timestep of noise level ``sigma`` (:func:`sigma_to_t`)."""
        return float(sigma_to_t(sigma, self.train_sigmas))

    def __repr__(self) -> str:
        ts = ", ".join(f"{float(t):g}" for t in self.timesteps[:4])
        return f"SamplingGrid({self.num_steps} steps, t = {ts}{', ...' if self.num_steps > 3 else ''}; sigma {float(self.sigmas[0]):.4g} -> {float(self.sigmas[-1]):.4g})"


def _train_alphas_cumprod(alphas_cumprod) -> torch.Tensor:
    acp = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return torch.where(acp == 0, torch.full_like(acp, ZERO_SNR_ALPHA_CUMPROD), acp)


def check_timesteps(timesteps, T: int) -> torch.Tensor:
    """Explicit timesteps: a non-empty, strictly ascending sequence of numbers in [0, T-1] (float64)."""
    ts = torch.as_tensor(np.asarray(timesteps, dtype=np.float64)).reshape(-1)
    if ts.numel() == 0 or not torch.isfinite(ts).all() or ts.min() < 0 or ts.max() > T - 1 or torch.any(ts.diff() <= 0):
        raise ValueError(f"timesteps must be a non-empty, strictly ascending sequence of numbers in [0, {T - 1}], got {timesteps!r}")
    return ts


def build_grid(alphas_cumprod, steps: int = 50, spacing: str = "uniform", sigma_schedule: str = "default",
               steps_offset: int = 0, set_alpha_to_one: bool = False, timesteps=None, rho: float = 7.0) -> SamplingGrid:
    r"""The :class:`SamplingGrid` of a run (``alphas_cumprod``: the schedule's :math:`\bar\alpha_t`, or a ``NoiseSchedule``).

    ``timesteps`` (ascending) replaces ``steps``/``spacing`` for the default σ schedule. The end point
    is :math:`\sigma = 0` with ``set_alpha_to_one``, otherwise :math:`\bar\alpha_0` (see the module docstring).
    diffusers: ``scheduler.set_timesteps(steps)`` then ``scheduler.timesteps`` / ``scheduler.sigmas``.
    """
    acp = _train_alphas_cumprod(getattr(alphas_cumprod, "alphas_cumprod", alphas_cumprod))
    T = len(acp)
    train_sigmas = ((1 - acp) / acp).sqrt()
    if sigma_schedule == "default":
        ts = check_timesteps(timesteps, T) if timesteps is not None else torch.as_tensor(
            make_timesteps(steps, T, spacing, steps_offset), dtype=torch.float64)
        ts = ts.flip(0)
        integer = ts == ts.round()
        sig = t_to_sigma(ts, train_sigmas)
        a = torch.where(integer, acp[ts.round().long().clamp(0, T - 1)], 1 / (1 + sig**2))
        sig = torch.where(integer, train_sigmas[ts.round().long().clamp(0, T - 1)], sig)
    elif sigma_schedule in ("karras", "exponential"):
        if timesteps is not None:
            raise ValueError(f"explicit timesteps cannot be combined with sigma_schedule={sigma_schedule!r}; "
                             "use grid.last(n) of a built grid instead")
        if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
            raise ValueError(f"the number of sampling steps must be an integer from 1 to {T}, got {steps!r}")
        s_min, s_max = float(train_sigmas[0]), float(train_sigmas[-1])
        sig = karras_sigmas(s_min, s_max, steps, rho) if sigma_schedule == "karras" else exponential_sigmas(s_min, s_max, steps)
        ts = sigma_to_t(sig, train_sigmas)
        a = 1 / (1 + sig**2)
    else:
        raise ValueError(f"unknown sigma_schedule {sigma_schedule!r}; choose one of {SIGMA_SCHEDULES}")
    end_t, end_a = (-1.0, 1.0) if set_alpha_to_one else (0.0, float(acp[0]))
    one = torch.ones(1, dtype=torch.float64)
    a = torch.cat([a, end_a * one])
    return SamplingGrid(torch.cat([ts, end_t * one]), a, ((1 - a) / a).sqrt(), acp)

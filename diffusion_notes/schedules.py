r"""Beta schedules and the buffers derived from :math:`\bar\alpha_t` (``alphas_cumprod``).

Everything here is computed in float64: the products :math:`\bar\alpha_t = \prod_{s\le t}(1-\beta_s)`
lose several digits in float32 near :math:`t = T`, and the samplers divide by them.

The naming trap
---------------
CompVis (and every Stable Diffusion YAML) calls Stable Diffusion's schedule ``"linear"``::

    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n) ** 2   # CompVis "linear"

That is linear in :math:`\sqrt\beta`, not in :math:`\beta`. The DDPM paper's linear schedule (and
diffusers' ``"linear"``) is ``linspace(linear_start, linear_end, n)``, which CompVis calls
``"sqrt_linear"``. Here the names follow the DDPM paper and diffusers: SD's schedule is
``"scaled_linear"``. CompVis's names are accepted only through ``naming="compvis"``, and
``"linear"`` with Stable Diffusion's ``linear_start=0.00085, linear_end=0.012`` warns, because
that combination almost always means a CompVis config was copied without the translation.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields

import torch

__all__ = ["make_beta_schedule", "rescale_zero_terminal_snr", "NoiseSchedule", "SCHEDULE_NAMES", "COMPVIS_NAMES", "DIFFUSERS_NAMES", "SD_BETA_RANGE"]

#: The names this package uses (DDPM paper / diffusers conventions).
SCHEDULE_NAMES = ("linear", "scaled_linear", "cosine", "sqrt")

#: CompVis ``make_beta_schedule`` name -> the name used here.
COMPVIS_NAMES = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "cosine", "sqrt": "sqrt"}

#: diffusers ``beta_schedule`` name -> the name used here.
DIFFUSERS_NAMES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}

#: Stable Diffusion's (linear_start, linear_end), the same in every release (v1-inference.yaml, sd_xl_base.yaml).
SD_BETA_RANGE = (0.00085, 0.012)


def make_beta_schedule(
    name: str,
    num_timesteps: int = 1000,
    linear_start: float = 1e-4,
    linear_end: float = 2e-2,
    cosine_s: float = 8e-3,
    naming: str = "paper",
) -> torch.Tensor:
    r"""The variance schedule :math:`\beta_1..\beta_T` as a float64 tensor of length ``num_timesteps``.

    Schedules (names as in the DDPM paper and diffusers; ``naming="compvis"`` or ``"diffusers"``
    translates the other vocabularies first):

    * ``"linear"``: :math:`\beta_t` linear from ``linear_start`` to ``linear_end``
      (DDPM, Ho et al. 2020, Sec. 4). CompVis: ``"sqrt_linear"``.
    * ``"scaled_linear"``: :math:`\sqrt{\beta_t}` linear, then squared: Stable Diffusion's schedule.
      CompVis: ``"linear"`` (see the module docstring for the trap).
    * ``"cosine"``: improved DDPM (Nichol & Dhariwal 2021, Eq. 17):
      :math:`\bar\alpha_t = f(t)/f(0)` for the paper's :math:`t = 1..T` (``f(t+1)/f(0)`` at the 0-based index), :math:`f(t) = \cos^2\!\big(\frac{t/T + s}{1+s}\frac{\pi}{2}\big)`,
      :math:`\beta_t = 1 - \bar\alpha_t / \bar\alpha_{t-1}` clipped at 0.999. diffusers: ``"squaredcos_cap_v2"``.
    * ``"sqrt"``: :math:`\beta_t = \sqrt{\text{linspace}(\text{start}, \text{end})}` (CompVis ``"sqrt"``).

    CompVis name: ``ldm.modules.diffusionmodules.util.make_beta_schedule``.
    diffusers name: ``DDPMScheduler(beta_schedule=...).betas``.
    """
    if naming == "compvis":
        table, vocabulary = COMPVIS_NAMES, "CompVis"
    elif naming == "diffusers":
        table, vocabulary = DIFFUSERS_NAMES, "diffusers"
    elif naming == "paper":
        table, vocabulary = {n: n for n in SCHEDULE_NAMES}, "paper"
    else:
        raise ValueError(f"naming must be 'paper', 'compvis' or 'diffusers', not {naming!r}")
    if name not in table:
        hint = ""
        if naming == "paper" and name in COMPVIS_NAMES:
            hint = f" ('{name}' is a CompVis name for '{COMPVIS_NAMES[name]}'; pass naming='compvis' to use it)"
        elif naming == "paper" and name in DIFFUSERS_NAMES:
            hint = f" ('{name}' is the diffusers name for '{DIFFUSERS_NAMES[name]}'; pass naming='diffusers')"
        raise ValueError(f"unknown {vocabulary} beta schedule {name!r}; choose one of {sorted(table)}{hint}")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be at least 1, got {num_timesteps}")
    schedule = table[name]
    if naming != "compvis" and schedule == "linear" and (linear_start, linear_end) == SD_BETA_RANGE:
        warnings.warn(
            "make_beta_schedule('linear') with Stable Diffusion's linear_start/linear_end gives the DDPM "
            "linear schedule; SD's configs call 'linear' what is 'scaled_linear' here. "
            "Pass naming='compvis' if these values come from a CompVis/SD YAML.",
            stacklevel=2,
        )

    n, f64 = num_timesteps, torch.float64
    if schedule == "linear":
        return torch.linspace(linear_start, linear_end, n, dtype=f64)
    if schedule == "scaled_linear":
        return torch.linspace(linear_start**0.5, linear_end**0.5, n, dtype=f64) ** 2
    if schedule == "sqrt":
        return torch.linspace(linear_start, linear_end, n, dtype=f64) ** 0.5
    # cosine: the ratio f(t)/f(t-1) needs no normalisation by f(0), it cancels.
    steps = torch.arange(n + 1, dtype=f64) / n
    f = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


def rescale_zero_terminal_snr(betas) -> torch.Tensor:
    r"""Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"), Algorithm 1.

    Shift and scale :math:`\sqrt{\bar\alpha_t}` so that the last one is exactly 0 (zero terminal SNR, so
    :math:`x_T` is pure noise as at sampling time) while the first is unchanged:

    .. math::
        \sqrt{\bar\alpha_t}' = \big(\sqrt{\bar\alpha_t} - \sqrt{\bar\alpha_T}\big)\,
            \frac{\sqrt{\bar\alpha_1}}{\sqrt{\bar\alpha_1} - \sqrt{\bar\alpha_T}},\qquad
        \beta_t' = 1 - \frac{\bar\alpha_t'}{\bar\alpha_{t-1}'}\ (\beta_T' = 1).

    Models must be trained (or fine-tuned, with v-prediction) on the rescaled schedule; samplers meet
    :math:`\sigma_T = \infty` (see ``samplers.grid.ZERO_SNR_ALPHA_CUMPROD``).
    diffusers: ``rescale_zero_terminal_snr`` (``rescale_betas_zero_snr=True`` in the schedulers)."""
    betas = torch.as_tensor(betas, dtype=torch.float64)
    alphas_bar_sqrt = torch.cumprod(1 - betas, 0).sqrt()
    a_first, a_last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - a_last) * a_first / (a_first - a_last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


@dataclass(frozen=True)
class NoiseSchedule:
    r"""Every per-timestep buffer of a discrete diffusion, under CompVis's buffer names.

    All attributes are 1-D float64 tensors of length T indexed by the timestep t = 0..T-1
    (the paper's :math:`t = 1..T`). Built by :meth:`from_betas`; frozen so that a sampler can
    never change the schedule another one reads.

    ========================================  ==============================================================
    attribute                                  formula
    ========================================  ==============================================================
    ``betas``                                  :math:`\beta_t`
    ``alphas``                                 :math:`\alpha_t = 1 - \beta_t`
    ``alphas_cumprod``                         :math:`\bar\alpha_t = \prod_{s \le t} \alpha_s` (DDPM Eq. 4)
    ``alphas_cumprod_prev``                    :math:`\bar\alpha_{t-1}`, with :math:`\bar\alpha_{-1} = 1`
    ``sqrt_alphas_cumprod``                    :math:`\sqrt{\bar\alpha_t}`
    ``sqrt_one_minus_alphas_cumprod``          :math:`\sqrt{1 - \bar\alpha_t}`
    ``log_one_minus_alphas_cumprod``           :math:`\log(1 - \bar\alpha_t)`
    ``sqrt_recip_alphas_cumprod``              :math:`1/\sqrt{\bar\alpha_t}`
    ``sqrt_recipm1_alphas_cumprod``            :math:`\sqrt{1/\bar\alpha_t - 1}`
    ``posterior_variance``                     :math:`\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t` (DDPM Eq. 7)
    ``posterior_log_variance_clipped``         :math:`\log\max(\tilde\beta_t, 10^{-20})`
    ``posterior_mean_coef1``                   :math:`\frac{\sqrt{\bar\alpha_{t-1}}\beta_t}{1-\bar\alpha_t}` (coefficient of :math:`x_0`)
    ``posterior_mean_coef2``                   :math:`\frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}` (coefficient of :math:`x_t`)
    ``snr``                                    :math:`\bar\alpha_t / (1 - \bar\alpha_t)` (Kingma et al. 2021)
    ========================================  ==============================================================

    The clipping at :math:`10^{-20}` is CompVis's: :math:`\tilde\beta_0 = 0`, whose log is -inf.
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    log_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    snr: torch.Tensor

    @classmethod
    def from_betas(cls, betas) -> "NoiseSchedule":
        """All buffers from :math:`\\beta_t`, in float64 (CompVis ``DDPM.register_schedule``)."""
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        inside = (betas > 0) & (betas < 1)
        inside[-1:] |= betas[-1:] == 1  # beta_T = 1: a zero-terminal-SNR schedule (rescale_zero_terminal_snr)
        if betas.numel() == 0 or not torch.all(inside):
            raise ValueError("betas must be a non-empty sequence of numbers strictly between 0 and 1 (the last may be 1)")
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        return cls(
            betas=betas,
            alphas=alphas,
            alphas_cumprod=alphas_cumprod,
            alphas_cumprod_prev=alphas_cumprod_prev,
            sqrt_alphas_cumprod=alphas_cumprod.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - alphas_cumprod).sqrt(),
            log_one_minus_alphas_cumprod=torch.log(1.0 - alphas_cumprod),
            sqrt_recip_alphas_cumprod=(1.0 / alphas_cumprod).sqrt(),
            sqrt_recipm1_alphas_cumprod=(1.0 / alphas_cumprod - 1).sqrt(),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=torch.log(posterior_variance.clamp(min=1e-20)),
            posterior_mean_coef1=betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
            snr=alphas_cumprod / (1.0 - alphas_cumprod),
        )

    @classmethod
    def from_name(cls, name: str, num_timesteps: int = 1000, zero_terminal_snr: bool = False, **kwargs) -> "NoiseSchedule":
        """Shorthand for ``NoiseSchedule.from_betas(make_beta_schedule(name, num_timesteps, **kwargs))``;
        ``zero_terminal_snr`` applies :func:`rescale_zero_terminal_snr` first."""
        betas = make_beta_schedule(name, num_timesteps, **kwargs)
        return cls.from_betas(rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas)

    @classmethod
    def stable_diffusion(cls, zero_terminal_snr: bool = False) -> "NoiseSchedule":
        """The schedule of every Stable Diffusion release (1.x, 2.x, XL): scaled_linear, 0.00085..0.012, T=1000
        (rescaled to zero terminal SNR with ``zero_terminal_snr``, Lin et al. 2023)."""
        return cls.from_name("scaled_linear", 1000, zero_terminal_snr, linear_start=SD_BETA_RANGE[0], linear_end=SD_BETA_RANGE[1])

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @property
    def sigmas(self) -> torch.Tensor:
        r""":math:`\sigma_t = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}`: the noise level of :math:`x_t/\sqrt{\bar\alpha_t}`
        (Karras et al. 2022; the time variable of DDIM's ODE, DDIM Eq. 14)."""
        return self.sqrt_recipm1_alphas_cumprod

    def to(self, device=None, dtype=None) -> "NoiseSchedule":
        """A copy with every buffer moved/cast (keep float64 for sampling arithmetic where you can)."""
        return NoiseSchedule(**{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)})

    def __repr__(self) -> str:
        a = self.alphas_cumprod
        return (
            f"NoiseSchedule(T={self.num_timesteps}, beta {self.betas[0]:.3g}..{self.betas[-1]:.3g}, "
            f"alphas_cumprod {a[0]:.4g}..{a[-1]:.3g})"
        )

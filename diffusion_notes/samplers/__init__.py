"""Sampler update rules as pure step functions; ``diffusion_notes.sampling.sample`` runs them in a loop."""

from .ddim import ddim_sigma, ddim_step
from .ddpm import DDPM_VARIANCES, ddpm_step
from .plms import ADAMS_BASHFORTH, adams_bashforth, plms_step
from .pndm import PRK_WARMUP_STEPS, prk_step
from .timesteps import SPACINGS, ddim_sampling_parameters, make_timesteps

SAMPLERS = ("ddpm", "ddim", "plms", "pndm")

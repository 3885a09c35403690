"""Samplers: pure update rules, each family's loop functions registered by name in :data:`SAMPLERS`.

``diffusion_notes.sampling.sample`` validates the settings, builds the :class:`SamplingGrid` and runs
the registered loop. Adding a sampler: a new module here that decorates its loop with
:func:`~diffusion_notes.samplers.registry.register`, one import line below, and its tests.
"""

from .registry import SAMPLERS, SamplerSpec, Step, register  # noqa: I001  (the registry first)
from .timesteps import SPACINGS, ddim_sampling_parameters, make_timesteps, strictly_ascending
from .grid import SIGMA_SCHEDULES, SamplingGrid, build_grid, exponential_sigmas, karras_sigmas, sigma_to_t, t_to_sigma

# the families, in the order their samplers are listed (CompVis's four first)
from .ddpm import DDPM_VARIANCES, ddpm_step
from .ddim import ddim_sigma, ddim_step
from .plms import ADAMS_BASHFORTH, adams_bashforth, plms_step
from .pndm import PRK_WARMUP_STEPS, prk_step

"""Samplers: pure update rules, each family's loop functions registered by name in :data:`SAMPLERS`.

``diffusion_notes.sampling.sample`` validates the settings, builds the :class:`SamplingGrid` and runs
the registered loop. Adding a sampler: a new module in this folder that decorates its loop with
:func:`~diffusion_notes.samplers.registry.register`, and its tests. Every module here is imported below
(the known families first, in the order they are listed), so a new one registers itself.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from .registry import SAMPLERS, SamplerSpec, Step, register  # noqa: I001  (the registry first)
from .timesteps import SPACINGS, ddim_sampling_parameters, make_timesteps, strictly_ascending
from .grid import SIGMA_SCHEDULES, SamplingGrid, build_grid, exponential_sigmas, karras_sigmas, sigma_to_t, t_to_sigma

# the families, in the order their samplers are listed (CompVis's four first)
from .ddpm import DDPM_VARIANCES, ddpm_step
from .ddim import ddim_sigma, ddim_step
from .plms import ADAMS_BASHFORTH, adams_bashforth, plms_step
from .pndm import PRK_WARMUP_STEPS, prk_step

# the σ samplers (Karras et al. 2022's view; AUTOMATIC1111's names in parentheses)
from .sigma import ancestral_step, denoise, edm_scalings, to_d
from .euler import euler_ancestral_step, euler_step, heun_step  # euler (Euler), euler_a (Euler a), heun (Heun)
from .lms import lms_coefficient, lms_step  # lms (LMS)
from .dpmpp import dpmpp_2m_sde_step, dpmpp_2m_step, dpmpp_2s_step, dpmpp_first_order_step  # DPM++ 2M, 2M SDE, 2S a
from .unipc import unipc_bh2_update, unipc_coefficients  # unipc (UniPC)

# any further family module in this folder registers itself (after the ones above, in name order)
for _module in sorted(m.name for m in _pkgutil.iter_modules(__path__)):
    _importlib.import_module(f"{__name__}.{_module}")

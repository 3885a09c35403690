"""diffusion-notes: the mathematics of diffusion models, one formula per function.

The math core (schedules, forward process, samplers) imports nothing from the models;
the models import nothing from the notebooks; the Stable Diffusion pipeline composes them.
See docs/formulas.md for the map from every formula to its function and test.
"""

from .forward import (
    extract_into_tensor,
    get_v,
    predict_eps_from_z_and_v,
    predict_noise_from_start,
    predict_start_from_noise,
    predict_start_from_z_and_v,
    q_posterior_mean_variance,
    q_sample,
)
from .losses import p_losses, training_target
from .schedules import NoiseSchedule, make_beta_schedule

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: the Stable Diffusion engine imports transformers (seconds); the math core should not pay for it.
    if name == "StableDiffusion":
        from .stable_diffusion import StableDiffusion

        return StableDiffusion
    raise AttributeError(f"module 'diffusion_notes' has no attribute {name!r}")

"""Checkers for the classroom exercises in ``notebooks/exercises``.

Each ``check_<name>(student_function)`` runs the student's function on several fixed float64
cases, compares it with the library (or a closed form), prints what went wrong (the case, the
inputs, expected vs got, and a hint that recognises the typical mistakes) and returns True/False.
A stub that still raises ``NotImplementedError`` is reported as "not implemented yet".
"""

from .checkers import (
    EXERCISES,
    check_adams_bashforth_coefficients,
    check_alphas_cumprod,
    check_ancestral_sigmas,
    check_cross_attention,
    check_ddpm_ancestral_step,
    check_euler_step_in_sigma,
    check_karras_sigmas,
    check_plms_step_with_history,
    check_to_sigma_view,
    check_training_step,
    check_x0_and_eps_from_v,
    check_alphas_cumprod_prev,
    check_classifier_free_guidance,
    check_ddim_sigma,
    check_ddim_step,
    check_ddim_timesteps,
    check_get_v,
    check_l_simple,
    check_posterior_mean_variance,
    check_predict_start_from_noise,
    check_predict_start_from_z_and_v,
    check_pseudo_improved_euler,
    check_q_sample,
    check_snr,
)

__all__ = [name for name in dir() if name.startswith("check_")] + ["EXERCISES"]

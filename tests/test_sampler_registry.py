"""The redesign (registry + grid + one validation) against a frozen copy of the loop it replaced,
and the settings' validation.

``_legacy_sample`` below is the body of ``diffusion_notes.sampling.sample`` as it was before the
sampler registry (commit feb455d), kept verbatim apart from its name and imports: the reference the
new loop must reproduce to 1e-12 in float64 for every old sampler, spacing and a sweep of step counts.
"""

import numpy as np
import pytest
import torch

from diffusion_notes.errors import SettingsError
from diffusion_notes.mixture import GaussianMixture
from diffusion_notes.noise import randn
from diffusion_notes.samplers import (
    PRK_WARMUP_STEPS, SAMPLERS, SPACINGS, SamplerSpec, build_grid, ddim_sampling_parameters, ddim_step, ddpm_step,
    make_timesteps, plms_step, prk_step,
)
from diffusion_notes.sampling import SamplerSettings, model_output_to_eps, sample
from diffusion_notes.schedules import NoiseSchedule

from oracle_models import dummy_eps

SCHEDULE = NoiseSchedule.stable_diffusion()


# ------------------------------------------------------------------------------------------------
# LEGACY REFERENCE: the sampling loop before the registry (frozen copy, do not edit)
# ------------------------------------------------------------------------------------------------

def _legacy_default_sampler_settings(sampler):
    if sampler == "ddpm":
        return {"spacing": "leading", "set_alpha_to_one": True}
    return {"spacing": "uniform", "set_alpha_to_one": False}


def _legacy_check_timesteps(timesteps, T):
    ts = np.asarray(timesteps, dtype=np.int64).reshape(-1)
    if ts.size == 0 or ts.min() < 0 or ts.max() >= T or np.any(np.diff(ts) < 0):
        raise ValueError(f"timesteps must be a non-empty ascending sequence of integers in [0, {T}), got {timesteps!r}")
    return ts


def _legacy_sample(eps_model, x_T, schedule, sampler="plms", steps=50, eta=0.0, spacing=None, prediction_type="eps",
                   set_alpha_to_one=None, steps_offset=0, timesteps=None, generator=None, callback=None,
                   return_trajectory=False, ddpm_variance="posterior", clip_denoised=False):
    defaults = _legacy_default_sampler_settings(sampler)
    spacing = defaults["spacing"] if spacing is None else spacing
    set_alpha_to_one = defaults["set_alpha_to_one"] if set_alpha_to_one is None else set_alpha_to_one

    T = schedule.num_timesteps
    if timesteps is None:
        ddim_timesteps = make_timesteps(steps, T, spacing, steps_offset)
    else:
        ddim_timesteps = _legacy_check_timesteps(timesteps, T)
    ddim_alphas, ddim_alphas_prev, ddim_sigmas = ddim_sampling_parameters(schedule.alphas_cumprod, ddim_timesteps, eta, set_alpha_to_one)
    batch = x_T.shape[0]

    def eps_fn(x, t):
        t_in = torch.full((batch,), int(t), dtype=torch.long, device=x.device)
        return model_output_to_eps(eps_model(x, t_in), x, t_in, schedule, prediction_type)

    time_range = ddim_timesteps[::-1]
    total_steps = len(time_range)
    old_eps = []
    x = x_T
    for i, t in enumerate(time_range):
        index = total_steps - i - 1
        a_t, a_prev, sigma_t = float(ddim_alphas[index]), float(ddim_alphas_prev[index]), float(ddim_sigmas[index])
        if sampler == "ddim":
            noise = randn(x.shape, generator, x.device, x.dtype) if eta > 0 else None
            x, pred_x0 = ddim_step(x, eps_fn(x, t), a_t, a_prev, sigma_t, noise)
        elif sampler == "ddpm":
            noise = randn(x.shape, generator, x.device, x.dtype) if index > 0 else None
            x, pred_x0 = ddpm_step(x, eps_fn(x, t), a_t, a_prev, noise, ddpm_variance, clip_denoised)
        elif sampler == "pndm" and i < PRK_WARMUP_STEPS:
            t_prev = int(time_range[i + 1]) if i + 1 < total_steps else 0
            t_mid = int(t) - (int(t) - t_prev) // 2
            a_mid = float(schedule.alphas_cumprod[t_mid])
            x, pred_x0, e_t = prk_step(eps_fn, x, t, t_mid, t_prev, a_t, a_mid, a_prev)
            old_eps.append(e_t)
        else:  # plms, and pndm after its warm-up
            t_next = time_range[min(i + 1, total_steps - 1)]
            x, pred_x0, e_t = plms_step(eps_fn, x, t, t_next, a_t, a_prev, old_eps)
            old_eps.append(e_t)
            if len(old_eps) >= 4:
                old_eps.pop(0)
        if callback is not None:
            callback(i, int(t), x, pred_x0)
    return x

# ------------------------------------------------------------------------------------------------
# end of the legacy reference
# ------------------------------------------------------------------------------------------------


def _x_T(seed=0):
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


STEP_COUNTS = [1, 2, 3, 4, 5, 7, 10, 20, 25, 50]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "plms", "pndm"])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_new_loop_reproduces_the_legacy_loop(sampler, spacing):
    compared = 0
    for steps in STEP_COUNTS:
        try:
            ts = make_timesteps(steps, 1000, spacing, 0)
        except ValueError:
            continue  # CompVis 'uniform' past the end: refused by both
        for extra in ({}, {"set_alpha_to_one": True}, {"set_alpha_to_one": False}):
            kw = dict(spacing=spacing, steps_offset=0, **extra)
            expected = _legacy_sample(dummy_eps, _x_T(), SCHEDULE, sampler, steps, generator=torch.Generator().manual_seed(3), **kw)
            ours = sample(dummy_eps, _x_T(), SCHEDULE, sampler, steps, generator=torch.Generator().manual_seed(3), **kw)
            torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12, msg=f"{sampler} {spacing} {steps} {extra}")
            compared += 1
        assert len(ts) >= 1
    assert compared >= 20


@pytest.mark.parametrize("sampler, kw", [
    ("ddim", dict(eta=0.7)), ("ddim", dict(eta=1.0, prediction_type="v")), ("plms", dict(prediction_type="v")),
    ("ddpm", dict(ddpm_variance="beta")), ("ddpm", dict(clip_denoised=True)), ("pndm", dict(prediction_type="x0")),
    ("ddim", dict(spacing="leading", steps_offset=1)),
])
def test_new_loop_reproduces_the_legacy_loop_with_options(sampler, kw):
    for steps in (1, 10, 25):
        expected = _legacy_sample(dummy_eps, _x_T(1), SCHEDULE, sampler, steps, generator=torch.Generator().manual_seed(4), **kw)
        ours = sample(dummy_eps, _x_T(1), SCHEDULE, sampler, steps, generator=torch.Generator().manual_seed(4), **kw)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)


def test_explicit_timesteps_and_the_callback_match_the_legacy_loop():
    ts = make_timesteps(20, 1000, "trailing")[3:]
    seen_old, seen_new = [], []
    expected = _legacy_sample(dummy_eps, _x_T(2), SCHEDULE, "pndm", timesteps=ts, callback=lambda *a: seen_old.append(a[:2]))
    ours = sample(dummy_eps, _x_T(2), SamplerSettings("pndm").grid(SCHEDULE, ts), "pndm", callback=lambda *a: seen_new.append(a[:2]))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    assert seen_new == seen_old


def test_ddpm_with_every_timestep_runs_with_the_default_steps_offset():
    """One default (the sampler's own, in its spec): DDPM visits T-1..0 with steps = T (was a ValueError in the pipeline)."""
    grid = SamplerSettings("ddpm", 1000).grid(SCHEDULE)
    assert grid.timesteps[0] == 999 and grid.timesteps[-2] == 0 and grid.alphas_cumprod[-1] == 1
    ddim = SamplerSettings("ddim", 10, spacing="leading").grid(SCHEDULE)
    assert ddim.timesteps[:-1].tolist() == list(range(901, 0, -100))  # SD's steps_offset = 1


def test_quad_spacing_never_repeats_a_timestep():
    for steps in range(1, 1000):
        ts = make_timesteps(steps, 1000, "quad")
        assert len(ts) == steps and np.all(np.diff(ts) > 0)
        raw = (np.linspace(0, np.sqrt(800), steps) ** 2).astype(int) + 1  # CompVis's formula
        assert np.all(ts >= raw) and (not np.all(np.diff(raw) > 0) or np.array_equal(ts, raw))
    assert make_timesteps(50, 1000, "quad")[:6].tolist() == [1, 2, 3, 4, 6, 9]  # CompVis: [1 1 2 3 6 9]


def test_registry_entries_are_complete():
    assert list(SAMPLERS)[:4] == ["ddpm", "ddim", "plms", "pndm"]
    for name, spec in SAMPLERS.items():
        assert isinstance(spec, SamplerSpec) and spec.name == name and spec.label and spec.description
        assert callable(spec.fn) and set(spec.grid_defaults) == {"spacing", "steps_offset", "set_alpha_to_one"}
        assert spec.fn.__doc__, name


@pytest.mark.parametrize("settings, option, match", [
    (lambda: SamplerSettings("bogus"), "sampler", "sampler must be one of ddpm, ddim, plms, pndm"),
    (lambda: SamplerSettings("ddim", options={"eta": -0.1}), "eta", "eta must be >= 0"),
    (lambda: SamplerSettings("ddim", options={"eta": float("nan")}), "eta", "finite"),
    (lambda: SamplerSettings("ddim", options={"eta": float("inf")}), "eta", "finite"),
    (lambda: SamplerSettings("plms", options={"eta": 0.5}), "eta", "the plms sampler takes set_alpha_to_one"),
    (lambda: SamplerSettings("ddim", options={"clip_denoised": True}), "clip_denoised", "applies to the ddpm sampler only; the ddim sampler takes eta"),
    (lambda: SamplerSettings("ddpm", options={"ddpm_variance": "bogus"}), "ddpm_variance", "'posterior', 'beta'"),
    (lambda: SamplerSettings("ddim", options={"nonsense": 1}), "nonsense", "no sampler takes an option 'nonsense'"),
    (lambda: SamplerSettings("ddim", steps=0), "steps", "from 1"),
    (lambda: SamplerSettings("ddim", steps=2.5), "steps", "integer"),
    (lambda: SamplerSettings("ddim", steps=1001), "steps", "from 1 to 1000"),
    (lambda: SamplerSettings("ddim", spacing="bogus"), "spacing", "leading"),
    (lambda: SamplerSettings("ddim", sigma_schedule="bogus"), "sigma_schedule", "karras"),
    (lambda: SamplerSettings("ddim", options={"set_alpha_to_one": "yes"}), "set_alpha_to_one", "True or False"),
])
def test_every_bad_setting_is_a_settings_error_naming_its_option(settings, option, match):
    """Refused when made, or (steps past the schedule) when checked against the schedule's length."""
    with pytest.raises(SettingsError, match=match) as info:
        settings().check_steps(1000)
    assert info.value.option == option


def test_sample_validates_through_the_settings():
    x = _x_T()
    with pytest.raises(SettingsError, match="the plms sampler takes"):
        sample(dummy_eps, x, SCHEDULE, "plms", ddpm_variance="beta")
    with pytest.raises(SettingsError, match="past the end"):
        sample(dummy_eps, x, SCHEDULE, "ddim", 3)
    with pytest.raises(SettingsError, match="either settings"):
        sample(dummy_eps, x, SCHEDULE, "ddim", settings=SamplerSettings("ddim"))
    settings = SamplerSettings("ddim", 10, options={"eta": 0.5})
    torch.testing.assert_close(
        sample(dummy_eps, x, SCHEDULE, settings=settings, generator=torch.Generator().manual_seed(0)),
        sample(dummy_eps, x, SCHEDULE, "ddim", 10, eta=0.5, generator=torch.Generator().manual_seed(0)), rtol=0, atol=0)


def test_labels_include_the_sigma_schedule():
    assert SamplerSettings("plms").label == "PLMS"
    assert SamplerSettings("ddim", sigma_schedule="karras").label == "DDIM Karras"


def test_model_output_of_the_wrong_shape_or_not_finite_is_reported():
    x = _x_T()
    with pytest.raises(ValueError, match=r"shape \(2, 1, 4, 4\) for an input of shape \(2, 3, 4, 4\)"):
        sample(lambda x, t: x[:, :1], x, SCHEDULE, "ddim", 10)

    def nan_below_500(x, t):
        return dummy_eps(x, t) * torch.where(t[:, None, None, None] < 500, float("nan"), 1.0)

    with pytest.raises(FloatingPointError, match=r"step 5 \(timestep 401\)"):
        sample(nan_below_500, x, SCHEDULE, "ddim", 10)


def test_the_model_gets_real_valued_float_timesteps_and_quantize_rounds_them():
    seen = []
    grid = build_grid(SCHEDULE, 5, sigma_schedule="karras", set_alpha_to_one=True)

    def model(x, t):
        seen.append(t.clone())
        return dummy_eps(x, t)

    sample(model, _x_T(), grid, "ddim")
    assert all(t.dtype == torch.float64 and t.shape == (2,) for t in seen)
    assert [float(t[0]) for t in seen] == grid.timesteps[:-1].tolist() and any(float(t[0]) % 1 for t in seen)
    seen.clear()
    sample(model, _x_T(), grid, "ddim", quantize=True)
    assert [float(t[0]) for t in seen] == grid.timesteps[:-1].round().tolist()


def test_mixture_eps_model_takes_real_timesteps_consistently_with_the_grid():
    mixture = GaussianMixture.example()
    grid = build_grid(SCHEDULE, 7, sigma_schedule="karras")
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps_model = mixture.eps_model(SCHEDULE)
    for t, a, sigma in zip(grid.timesteps[:-1], grid.alphas_cumprod[:-1], grid.sigmas[:-1]):
        expected = mixture.eps_at_sigma(x / a.sqrt(), sigma)  # the exact denoiser at the grid's own sigma
        torch.testing.assert_close(eps_model(x, t.repeat(5)), expected, rtol=1e-12, atol=1e-12)


def test_img2img_grid_tail_and_its_noising():
    grid = SamplerSettings("ddim", 10).grid(SCHEDULE)
    tail = grid.last(4)
    assert tail.num_steps == 4 and tail.timesteps.tolist() == grid.timesteps[-5:].tolist()
    x0, noise = _x_T(1), _x_T(2)
    a = SCHEDULE.alphas_cumprod[int(tail.timesteps[0])]
    torch.testing.assert_close(tail.q_sample(x0, noise), a.sqrt() * x0 + (1 - a).sqrt() * noise)
    full = sample(dummy_eps, _x_T(), SCHEDULE, "plms", 10, return_trajectory=True)[1]
    # PLMS restarted on the tail is not the same run (its history restarts), DDIM is:
    ddim_full = sample(dummy_eps, _x_T(), SCHEDULE, "ddim", 10, return_trajectory=True)[1]
    torch.testing.assert_close(sample(dummy_eps, ddim_full.x[6], tail, "ddim"), ddim_full.x[-1], rtol=0, atol=1e-12)
    assert len(full.x) == 11


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs_on_every_sigma_schedule_and_end_point(sampler):
    for schedule in ("default", "karras", "exponential"):
        for steps in (1, 2, 5):
            for alpha_one in (True, False):
                spacing = "leading" if sampler == "ddpm" else "trailing"  # valid for every step count
                out = sample(dummy_eps, _x_T(), SCHEDULE, sampler, steps, sigma_schedule=schedule, spacing=spacing,
                             set_alpha_to_one=alpha_one, generator=torch.Generator().manual_seed(0))
                assert torch.isfinite(out).all() and out.shape == _x_T().shape, (schedule, steps, alpha_one)


def test_the_docs_table_of_samplers_is_the_registry():
    from pathlib import Path

    from diffusion_notes.samplers.registry import markdown_table

    formulas = (Path(__file__).resolve().parents[1] / "docs" / "formulas.md").read_text()
    assert markdown_table() in formulas, "docs/formulas.md: paste samplers.registry.markdown_table() again"


def test_eta_zero_is_accepted_by_a_sampler_without_eta_and_changes_nothing():
    """CompVis's txt2img passes eta=opt.ddim_eta (0.0) to PLMSSampler.sample, which accepts 0 only."""
    x = _x_T()
    plain = sample(dummy_eps, x, SCHEDULE, "plms", 10)
    assert torch.equal(sample(dummy_eps, x, SCHEDULE, "plms", 10, eta=0.0), plain)
    assert torch.equal(sample(dummy_eps, x, SCHEDULE, "plms", 10, eta=0), plain)
    assert "eta" not in SamplerSettings("plms", options={"eta": 0.0}).options  # dropped: not in the PNG text
    with pytest.raises(SettingsError, match="eta applies to the ddim sampler only"):
        sample(dummy_eps, x, SCHEDULE, "plms", 10, eta=0.5)
    with pytest.raises(SettingsError, match="eta applies to the ddim sampler only"):
        SamplerSettings("plms", options={"eta": False})  # a bool is not the number 0

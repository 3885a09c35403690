"""The step viewer (diffusion_notes/step_viewer.py): its numbers against diffusers' schedulers and the grid, its
coefficients against the run they describe, its frames against the trajectory, the page offline and working in
headless chromium, and ``txt2img --step-viewer`` on the shipped miniature.

The coefficients are checked by re-doing each step here with the numbers the page shows: the recorded
:math:`x_{i+1}` must follow from the recorded :math:`x_i`, :math:`\\hat x_0` and those numbers, by the update written
out in this file (not by the samplers' code).
"""

from __future__ import annotations

import base64
import io
import math
import re

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from PIL import Image

from diffusion_notes import cli
from diffusion_notes.errors import SettingsError
from diffusion_notes.mixture import GaussianMixture
from diffusion_notes.samplers import SAMPLERS, build_grid
from diffusion_notes.sampling import SamplerSettings, sample
from diffusion_notes.schedules import NoiseSchedule
from diffusion_notes.step_viewer import LATENT_RANGE, StepViewer, step_records, watch

from oracle_models import dummy_eps
from step_viewer_probe import probe, with_probe

SCHEDULE = NoiseSchedule.stable_diffusion()
SD_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def images(seed=0):
    return torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run(sampler, steps=8, **options):
    viewer = watch(dummy_eps, images(), SCHEDULE, sampler, steps, generator=torch.Generator().manual_seed(1), **options)
    settings = SamplerSettings(sampler, steps, **{k: options.pop(k) for k in ("sigma_schedule",) if k in options},
                               options=options)
    _, trajectory = sample(dummy_eps, images(), SCHEDULE, settings=settings, generator=torch.Generator().manual_seed(1),
                           return_trajectory=True)
    return viewer, trajectory


def decoded_png(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("L"), dtype=np.float64)


# --------------------------------------------------------------------------------------------
# the numbers
# --------------------------------------------------------------------------------------------


def test_ddim_levels_are_diffusers_timesteps_and_alphas():
    steps = 10
    oracle = DDIMScheduler(**SD_CONFIG, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                           timestep_spacing="leading")
    oracle.set_timesteps(steps)
    records = step_records(SamplerSettings("ddim", steps), SamplerSettings("ddim", steps).grid(SCHEDULE))
    assert len(records) == steps
    acp = oracle.alphas_cumprod.double()
    for record, t in zip(records, oracle.timesteps.tolist()):
        prev = t - 1000 // steps
        assert record.t == t
        assert record.alpha_cumprod == pytest.approx(float(acp[t]), rel=1e-5)
        assert record.alpha_cumprod_next == pytest.approx(float(acp[prev] if prev >= 0 else oracle.final_alpha_cumprod), rel=1e-5)
        assert record.coefficients["sqrt(a_prev)"] == pytest.approx(record.alpha_cumprod_next**0.5, rel=1e-12)
        assert record.coefficients["sigma_t"] == 0


@pytest.mark.parametrize("schedule", ["default", "karras"])
def test_sigma_levels_are_diffusers_euler_sigmas(schedule):
    steps = 10
    oracle = EulerDiscreteScheduler(**SD_CONFIG, timestep_spacing="linspace", use_karras_sigmas=schedule == "karras")
    oracle.set_timesteps(steps)
    settings = SamplerSettings("euler", steps, sigma_schedule=schedule)
    records = step_records(settings, settings.grid(SCHEDULE))
    sigmas = oracle.sigmas.double().tolist()  # steps + 1 values, ending at 0 (diffusers' schedule is float32)
    assert [r.sigma for r in records] == pytest.approx(sigmas[:-1], rel=1e-4)
    assert [r.sigma_next for r in records] == pytest.approx(sigmas[1:], rel=1e-4, abs=1e-12)
    assert records[-1].sigma_next == 0 and records[-1].alpha_cumprod_next == 1


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_records_carry_the_grids_levels_for_every_sampler(sampler):
    settings = SamplerSettings(sampler, 7)
    r = settings.resolved()
    grid = build_grid(SCHEDULE, 7, r.spacing, "default", r.steps_offset, r.options["set_alpha_to_one"])
    records = step_records(settings, grid)
    assert [rec.i for rec in records] == list(range(grid.num_steps))  # CompVis's uniform spacing: 8 steps for 7
    for name, values in (("t", grid.timesteps), ("alpha_cumprod", grid.alphas_cumprod), ("sigma", grid.sigmas)):
        assert [getattr(rec, name) for rec in records] == values[:-1].tolist()
        assert [getattr(rec, f"{name}_next") for rec in records] == values[1:].tolist()
    assert all(rec.lines and rec.coefficients for rec in records)
    assert all(math.isfinite(v) for rec in records for v in rec.coefficients.values())


# --------------------------------------------------------------------------------------------
# the coefficients re-do the run
# --------------------------------------------------------------------------------------------


def _tensors(trajectory):
    return [x.double() for x in trajectory.x], [p.double() for p in trajectory.pred_x0]


@pytest.mark.parametrize("sampler", ["ddim", "plms", "pndm"])
def test_ddim_transfer_coefficients_redo_each_step(sampler):
    viewer, trajectory = run(sampler)
    xs, x0s = _tensors(trajectory)
    for i, rec in enumerate(viewer.records):
        c = rec.coefficients
        # the noise estimate the step used, from x_t and its x0 (DDPM Eq. 4 solved for eps)
        eps = (xs[i] - c["sqrt(a_t)"] * x0s[i]) / c["sqrt(1-a_t)"]
        c_eps = c["sqrt(1-a_prev-sigma_t^2)"] if sampler == "ddim" else c["sqrt(1-a_prev)"]
        assert torch.allclose(c["sqrt(a_prev)"] * x0s[i] + c_eps * eps, xs[i + 1], rtol=0, atol=1e-10), f"step {i}"
        assert c["a_t"] == pytest.approx(c["sqrt(a_t)"] ** 2, rel=1e-12)


def test_plms_weights_combine_the_models_outputs_into_the_step_used():
    viewer, trajectory = run("plms")
    xs, x0s = _tensors(trajectory)
    raw = []  # the raw model outputs e_t of each step, evaluated here
    for i, rec in enumerate(viewer.records):
        c = rec.coefficients
        e_t = dummy_eps(xs[i], torch.full((2,), rec.t, dtype=torch.float64))
        used = (xs[i] - c["sqrt(a_t)"] * x0s[i]) / c["sqrt(1-a_t)"]
        if i == 0:  # improved Euler: the average with the output at the DDIM step's end
            x_euler = c["sqrt(a_prev)"] * (xs[i] - c["sqrt(1-a_t)"] * e_t) / c["sqrt(a_t)"] + c["sqrt(1-a_prev)"] * e_t
            second = dummy_eps(x_euler, torch.full((2,), viewer.records[1].t, dtype=torch.float64))
            combined = c["w(e_t)"] * e_t + c["w(e(x', t_next))"] * second
        else:
            names = ["w(e_t)", "w(e_t+δ)", "w(e_t+2δ)", "w(e_t+3δ)"][: min(i, 3) + 1]
            history = [e_t, *reversed(raw[-3:])]
            combined = sum(c[name] * e for name, e in zip(names, history))
            assert sum(c[name] for name in names) == pytest.approx(1.0, rel=1e-12)  # a consistent multistep rule
        assert torch.allclose(combined, used, rtol=0, atol=1e-9), f"step {i}"
        raw.append(e_t)
    assert viewer.records[4].coefficients["w(e_t)"] == pytest.approx(55 / 24)


def _x_bar(x, c, key):
    return x * c[key]


@pytest.mark.parametrize("sampler", ["euler", "lms", "dpmpp_2m"])
def test_sigma_coefficients_redo_each_step(sampler):
    viewer, trajectory = run(sampler, sigma_schedule="karras")
    xs, x0s = _tensors(trajectory)
    slopes = []
    for i, rec in enumerate(viewer.records):
        c = rec.coefficients
        xb = _x_bar(xs[i], c, "sqrt(sigma^2+1)")
        assert c["sqrt(sigma^2+1)"] == pytest.approx(math.sqrt(rec.sigma**2 + 1), rel=1e-12)
        slopes.append((xb - x0s[i]) / rec.sigma)  # d_i = (x_bar - D)/sigma, Karras Eq. 3
        if sampler == "euler":
            xb_next = xb + c["sigma_next-sigma"] * slopes[-1]
        elif sampler == "lms":
            order = sum(1 for key in c if key.startswith("c_i"))
            assert order == min(i + 1, 4)
            xb_next = xb + sum(c[f"c_i{j}"] * slopes[-1 - j] for j in range(order))
            assert sum(c[f"c_i{j}"] for j in range(order)) == pytest.approx(rec.sigma_next - rec.sigma, rel=1e-9)
        elif rec.sigma_next == 0:  # DPM++ 2M's last step to sigma = 0: the denoised value itself
            xb_next = x0s[i]
        else:
            d_prime = c["w(D_i)"] * x0s[i] + c["w(D_i-1)"] * (x0s[i - 1] if i else 0)
            xb_next = c["sigma_next/sigma"] * xb + c["-(exp(-h)-1)"] * d_prime
            assert c["sigma_next/sigma"] == pytest.approx(rec.sigma_next / rec.sigma, rel=1e-12)
        x_next = xb_next / math.sqrt(rec.sigma_next**2 + 1)
        assert torch.allclose(x_next, xs[i + 1], rtol=0, atol=1e-9), f"step {i}"


def _noises(shape):
    """The run's noise draws, in order: the generator of ``run`` (seed 1), standard normal, float64."""
    generator = torch.Generator().manual_seed(1)
    while True:
        yield torch.randn(shape, generator=generator, dtype=torch.float64)


def test_ddpm_coefficients_redo_each_step_with_the_runs_noise():
    viewer, trajectory = run("ddpm", steps=5)
    xs, x0s = _tensors(trajectory)
    noises = _noises(xs[0].shape)
    for i, rec in enumerate(viewer.records):
        c = rec.coefficients
        z = next(noises) if i + 1 < len(viewer.records) else 0  # Alg. 2: no noise on the last step
        assert torch.allclose(c["coef_x0"] * x0s[i] + c["coef_xt"] * xs[i] + c["noise_std"] * z, xs[i + 1],
                              rtol=0, atol=1e-10), f"step {i}"
        beta = 1 - rec.alpha_cumprod / rec.alpha_cumprod_next  # the posterior variance of Eq. 7, closed form
        if i + 1 < len(viewer.records):
            assert c["noise_std"] ** 2 == pytest.approx(beta * (1 - rec.alpha_cumprod_next) / (1 - rec.alpha_cumprod), rel=1e-12)
    assert viewer.records[-1].coefficients["noise_std"] == 0


def test_ddim_with_eta_redoes_each_step_with_the_runs_noise():
    viewer, trajectory = run("ddim", eta=0.7)
    xs, x0s = _tensors(trajectory)
    noises = _noises(xs[0].shape)
    for i, rec in enumerate(viewer.records):
        c = rec.coefficients
        eps = (xs[i] - c["sqrt(a_t)"] * x0s[i]) / c["sqrt(1-a_t)"]
        expected = c["sqrt(a_prev)"] * x0s[i] + c["sqrt(1-a_prev-sigma_t^2)"] * eps + c["sigma_t"] * next(noises)
        assert torch.allclose(expected, xs[i + 1], rtol=0, atol=1e-10), f"step {i}"
        assert c["sigma_t"] > 0 and c["eta"] == 0.7


def test_euler_ancestral_redoes_each_step_with_the_runs_noise():
    viewer, trajectory = run("euler_a")
    xs, x0s = _tensors(trajectory)
    noises = _noises(xs[0].shape)
    for i, rec in enumerate(viewer.records):
        c = rec.coefficients
        assert c["sigma_down"] ** 2 + c["sigma_up"] ** 2 == pytest.approx(rec.sigma_next**2, rel=1e-12)
        xb = xs[i] * c["sqrt(sigma^2+1)"]
        z = next(noises) if c["noise_std"] > 0 else 0  # no noise drawn on the step to sigma = 0
        xb_next = xb + c["sigma_down-sigma"] * (xb - x0s[i]) / rec.sigma + c["noise_std"] * z
        assert torch.allclose(xb_next / c["sqrt(sigma_next^2+1)"], xs[i + 1], rtol=0, atol=1e-10), f"step {i}"
    assert viewer.records[-1].coefficients["noise_std"] == 0 and viewer.records[0].coefficients["noise_std"] > 0


def test_heun_redoes_each_step_with_its_second_evaluation():
    viewer, trajectory = run("heun")
    xs, x0s = _tensors(trajectory)
    for i, rec in enumerate(viewer.records):
        c = rec.coefficients
        xb = xs[i] * c["sqrt(sigma^2+1)"]
        d = (xb - x0s[i]) / rec.sigma
        x_euler = xb + c["sigma_next-sigma"] * d
        if rec.sigma_next == 0:
            xb_next = x_euler
        else:  # the slope at the Euler guess: D = x_bar - sigma * eps(x_bar / sqrt(sigma^2 + 1), t)
            eps = dummy_eps(x_euler / c["sqrt(sigma_next^2+1)"], torch.full((2,), rec.t_next, dtype=torch.float64))
            d_next = eps  # (x_bar - D) / sigma = eps
            xb_next = xb + c["sigma_next-sigma"] * (d + d_next) / 2
        assert torch.allclose(xb_next / c["sqrt(sigma_next^2+1)"], xs[i + 1], rtol=0, atol=1e-10), f"step {i}"


def test_dpmpp_2m_sde_redoes_each_step_with_the_runs_noise():
    viewer, trajectory = run("dpmpp_2m_sde", sigma_schedule="karras")
    xs, x0s = _tensors(trajectory)
    noises = _noises(xs[0].shape)
    for i, rec in enumerate(viewer.records):
        c = rec.coefficients
        if rec.sigma_next == 0:
            xb_next = x0s[i]  # the denoised value itself
        else:
            xb = xs[i] * c["sqrt(sigma^2+1)"]
            xb_next = c["coef_x"] * xb + c["coef_D"] * x0s[i] + c["noise_std"] * next(noises)
            if i:
                xb_next = xb_next + c["coef_D-D_prev"] * (x0s[i] - x0s[i - 1])
            assert c["coef_x"] == pytest.approx(rec.sigma_next / rec.sigma * math.exp(-c["eta"] * c["h"]), rel=1e-12)
        assert torch.allclose(xb_next / math.sqrt(rec.sigma_next**2 + 1), xs[i + 1], rtol=0, atol=1e-10), f"step {i}"


# --------------------------------------------------------------------------------------------
# the frames and the page
# --------------------------------------------------------------------------------------------


def test_frames_are_the_trajectorys_states_in_order():
    steps = 5
    viewer, trajectory = run("ddim", steps=steps)
    (state_title, states), (pred_title, preds) = viewer.frames.items()
    assert len(states) == len(preds) == steps + 1
    for k in range(steps + 1):  # x_k, pictures side by side with a 1-pixel white gap, [-1, 1] -> [0, 255]
        x = trajectory.x[k].clamp(-1, 1)
        expected = np.concatenate([(x[0, 0].numpy() + 1) * 127.5, np.full((6, 1), 255.0), (x[1, 0].numpy() + 1) * 127.5], axis=1)
        assert np.abs(decoded_png(states[k]) - expected).max() <= 0.5 + 1e-9, f"level {k}"
    for k in range(steps):
        p = trajectory.pred_x0[k].clamp(-1, 1)
        assert np.abs(decoded_png(preds[k])[:, :6] - (p[0, 0].numpy() + 1) * 127.5).max() <= 0.5 + 1e-9
    assert preds[steps] == states[steps]  # the last level shows the sample in both panels


def test_latents_show_channels_and_decoded_predictions():
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    decode = lambda z: torch.tanh(z[:, :3].repeat_interleave(4, -1).repeat_interleave(4, -2))  # noqa: E731
    viewer = watch(dummy_eps, latents, SCHEDULE, "euler", 3, decode=decode)
    (channels_title, channels), (picture_title, pictures) = viewer.frames.items()
    assert "latent channels" in channels_title and "VAE" in picture_title
    assert decoded_png(channels[0]).shape == (4, 4 * 4 + 3)  # 4 channels side by side
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(channels[0].split(",")[1]))), dtype=np.float64)
    expected = ((latents[0, 0].clamp(-LATENT_RANGE, LATENT_RANGE) + LATENT_RANGE) / (2 * LATENT_RANGE) * 255).numpy()
    assert np.abs(first[:, :4] - expected).max() <= 0.5 + 1e-9
    assert Image.open(io.BytesIO(base64.b64decode(pictures[0].split(",")[1]))).size == (16, 16)


def test_point_clouds_become_histograms():
    sd = NoiseSchedule.stable_diffusion()
    mixture = GaussianMixture.example()
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    viewer = watch(mixture.eps_model(sd), x_T, sd, "ddim", 5)
    assert all(len(frames) == 6 for frames in viewer.frames.values())
    states = list(viewer.frames.values())[0]
    first, final = decoded_png(states[0]), decoded_png(states[-1])
    assert final.shape == (80, 80) and final.min() == 0  # the densest bin is black
    # x_T ~ N(0, I) covers many more bins than the samples, gathered on three narrow components
    assert (final < 255).sum() < 0.5 * (first < 255).sum()


def test_the_page_is_offline_and_self_contained(tmp_path):
    viewer, _ = run("dpmpp_2m", steps=12, sigma_schedule="karras")
    page = viewer.page()
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/", page), "the page refers to the network"
    assert re.findall(r"\bsrc=['\"]([^'\"]*)", page) and all(s.startswith("data:image/png;base64,")
                                                              for s in re.findall(r"\bsrc=['\"]([^'\"]*)", page))
    assert "<link" not in page and "import(" not in page and "@import" not in page
    assert len(page) < 300_000
    path = viewer.save(tmp_path / "viewer.html")
    assert path.read_text(encoding="utf-8") == page
    with pytest.raises(SettingsError, match="already exists"):
        viewer.save(path)  # never replaces a file
    assert list(tmp_path.iterdir()) == [path]  # and leaves no partial one behind
    assert viewer._repr_html_() == viewer.html() and viewer.html() in page


def test_a_trajectory_from_another_grid_is_refused():
    settings = SamplerSettings("ddim", 4)
    _, trajectory = sample(dummy_eps, images(), SCHEDULE, settings=settings, return_trajectory=True)
    with pytest.raises(SettingsError, match="grid"):
        StepViewer(trajectory, SamplerSettings("ddim", 5).grid(SCHEDULE), settings)
    with pytest.raises(SettingsError, match="return_trajectory=True"):
        StepViewer(sample(dummy_eps, images(), SCHEDULE, settings=settings), settings.grid(SCHEDULE), settings)


def test_the_slider_shows_the_chosen_step_in_chromium(tmp_path):
    steps, k = 10, 3
    viewer, trajectory = run("ddim", steps=steps)
    oracle = DDIMScheduler(**SD_CONFIG, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    oracle.set_timesteps(steps)
    ts = oracle.timesteps.tolist()
    page = tmp_path / "viewer.html"
    page.write_text(with_probe(viewer.page(), k), encoding="utf-8")
    shown = probe(page.as_uri(), tmp_path / "profile")
    frames = list(viewer.frames.values())
    assert shown["initial"]["ready"] == "1" and shown["initial"]["step"] == "0"
    assert shown["initial"]["srcs"] == [f[0] for f in frames]
    for key, level in (("moved", k), ("next", k + 1), ("prev", k - 1)):
        state = shown[key]
        assert state["step"] == str(level), key
        assert state["srcs"] == [f[level] for f in frames], key
        assert f"step {level + 1} of {steps}: t = {ts[level]} → {ts[level + 1]}" in state["header"], state["header"]
        assert f"{math.sqrt(oracle.alphas_cumprod[ts[level + 1]]):.4g}·x̂0" in state["formula"], state["formula"]
    assert shown["last"]["step"] == str(steps) and "end point" in shown["last"]["header"]
    assert shown["moved"]["srcs"][0] != shown["initial"]["srcs"][0]


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------


def test_txt2img_step_viewer_writes_a_page_per_batch_and_never_replaces_one(tmp_path):
    out = tmp_path / "out"
    flags = ["txt2img", "--prompt", "a handwritten seven", "--ddim_steps", "4", "--n_samples", "2", "--device", "cpu",
             "--outdir", str(out), "--step-viewer"]
    assert cli.main(flags) == 0
    first = (out / "step-viewer-00000.html").read_text(encoding="utf-8")
    assert "a handwritten seven" in first and "samples/00000.png, samples/00001.png" in first
    assert not re.search(r"https?:", first)
    frames = re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]+", first)
    output = [uri for uri in frames if Image.open(io.BytesIO(base64.b64decode(uri.split(",")[1]))).size == (65, 32)]
    assert output, "no decoded frame of two 32x32 pictures"
    # the last decoded frame is the output: the two saved PNGs side by side (up to the 64-colour palette)
    saved = [np.asarray(Image.open(out / "samples" / f"0000{n}.png").convert("L"), dtype=np.float64) for n in (0, 1)]
    shown = decoded_png(output[-1])
    assert np.abs(shown[:, :32] - saved[0]).mean() < 4 and np.abs(shown[:, 33:] - saved[1]).mean() < 4
    (out / "step-viewer-00003.html").write_text("mine", encoding="utf-8")  # a user's file in the way
    assert cli.main(flags) == 0
    assert sorted(p.name for p in out.glob("step-viewer-*.html")) == ["step-viewer-00000.html", "step-viewer-00003.html",
                                                                       "step-viewer-00004.html"]
    assert (out / "step-viewer-00003.html").read_text(encoding="utf-8") == "mine"
    assert "samples/00002.png, samples/00003.png" in (out / "step-viewer-00004.html").read_text(encoding="utf-8")


def test_img2img_step_viewer_shows_the_steps_it_ran(tmp_path):
    image = tmp_path / "seven.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))).convert("RGB").save(image)
    out = tmp_path / "out"
    assert cli.main(["img2img", "--init-img", str(image), "--prompt", "a handwritten seven", "--strength", "0.5",
                     "--ddim_steps", "8", "--device", "cpu", "--outdir", str(out), "--step-viewer"]) == 0
    page = (out / "step-viewer-00000.html").read_text(encoding="utf-8")
    # CompVis img2img: t_enc = int(strength * ddim_steps) = 4 steps, from the 4th-lowest of the 8 uniform timesteps
    assert "data-steps='4'" in page and "step 1 of 4: t = 376 → 251" in page


def test_the_miniatures_default_50_step_page_stays_small(tmp_path):
    out = tmp_path / "out"
    assert cli.main(["txt2img", "--prompt", "a handwritten three", "--device", "cpu", "--outdir", str(out),
                     "--step-viewer"]) == 0
    page = (out / "step-viewer-00000.html").read_text(encoding="utf-8")
    assert "data-steps='50'" in page and len(page.encode()) < 300_000

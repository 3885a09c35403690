"""Bad inputs through the Python API (txt2img / img2img / inpaint) on the tiny SD 1.x model.

Issue 10's categories: images and masks (paths, ranks, channels, ranges, PIL modes, nothing to
repaint, strength leaving zero steps), sampler settings, non-finite numbers, NaN/inf from the model
(never a silent black picture), sizes too large, seeds (-1 = random, reported), and memory options
that must leave the model as they found it. Every refusal is a SettingsError (or, for damaged
weights, a CheckpointError) naming the option, raised before the first network runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_notes.errors import CheckpointError, SettingsError
from diffusion_notes.images import image_to_tensor, mask_to_tensor, pil_to_tensor
from diffusion_notes.init_image import blend_known_region
from diffusion_notes.pipeline import (
    MemoryOptions,
    NoDenoisingWarning,
    NonFiniteOutputWarning,
    img2img,
    inpaint,
    txt2img,
)
from diffusion_notes.stable_diffusion import StableDiffusion

from .helpers import SIZE, make_image, make_mask

FAST = dict(steps=2, sampler="ddim", seed=0)
NAN, INF = float("nan"), float("inf")


def _refused(call, option: str, error=SettingsError) -> str:
    with pytest.raises(error) as excinfo:
        call()
    if error is SettingsError:
        assert excinfo.value.option == option, (excinfo.value.option, str(excinfo.value))
    message = str(excinfo.value)
    assert "\n" not in message
    return message


class _NoNetworks:
    """Fails the test if a network runs: refusals must come before any work."""

    def __init__(self, sd, monkeypatch):
        def boom(*args, **kwargs):
            raise AssertionError("a network ran before the settings were refused")

        for module in (sd.unet, sd.vae, sd.prompt_encoder):
            monkeypatch.setattr(module, "forward", boom)


# --------------------------------------------------------------------------------------------
# settings through the API, refused before any network runs
# --------------------------------------------------------------------------------------------

TXT2IMG = {
    "guidance nan": (dict(guidance_scale=NAN), "guidance_scale"),
    "guidance inf": (dict(guidance_scale=INF), "guidance_scale"),
    "eta nan": (dict(eta=NAN), "eta"),
    "eta inf": (dict(eta=INF), "eta"),
    "eta negative": (dict(eta=-1.0), "eta"),
    "eta with plms": (dict(sampler="plms", eta=0.5), "eta"),
    "steps zero": (dict(steps=0), "steps"),
    "steps negative": (dict(steps=-5), "steps"),
    "steps float": (dict(steps=2.5), "steps"),
    "steps bool": (dict(steps=True), "steps"),
    "steps str": (dict(steps="10"), "steps"),
    "steps past the schedule": (dict(steps=1001), "steps"),
    "steps past the end (uniform)": (dict(steps=600), "steps"),
    "sampler unknown": (dict(sampler="nope"), "sampler"),
    "sampler None": (dict(sampler=None), "sampler"),
    "spacing unknown": (dict(spacing="random"), "spacing"),
    "sigma schedule unknown": (dict(sigma_schedule="cosine"), "sigma_schedule"),
    "sampler options not a dict": (dict(sampler_options=[("eta", 1)]), "sampler_options"),
    "sampler option unknown": (dict(sampler_options={"churn": 1.0}), "churn"),
    "steps_offset negative": (dict(steps_offset=-1), "steps_offset"),
    "height off the grid": (dict(height=SIZE + 1), "height"),
    "width zero": (dict(width=0), "width"),
    "too large for memory": (dict(height=2**19, width=2**19), "height"),
    "seed too large": (dict(seed=2**32), "seed"),
    "seed negative": (dict(seed=-7), "seed"),
    "num_images zero": (dict(num_images=0), "num_images"),
    "output unknown": (dict(output="jpeg"), "output"),
    "non_finite unknown": (dict(non_finite="skip"), "non_finite"),
    "memory not MemoryOptions": (dict(memory={"vae_slicing": True}), "memory"),
    "callback not callable": (dict(callback="print"), "callback"),
    "generator not a Generator": (dict(generator=42), "generator"),
    "latents wrong shape": (dict(latents=torch.zeros(1, 4, 8, 8)), "latents"),
    "latents nan": (dict(latents=torch.full((1, 4, SIZE // 2, SIZE // 2), NAN)), "latents"),
    "latents integers": (dict(latents=torch.zeros(1, 4, SIZE // 2, SIZE // 2, dtype=torch.long)), "latents"),
    "latents a list": (dict(latents=[[0.0]]), "latents"),
}


@pytest.mark.parametrize("case", TXT2IMG)
def test_bad_txt2img_settings_are_refused_before_any_network_runs(ours, monkeypatch, case):
    kwargs, option = TXT2IMG[case]
    sd = ours("sd1")
    _NoNetworks(sd, monkeypatch)
    _refused(lambda: txt2img(sd, "the cat", **(dict(height=SIZE, width=SIZE) | FAST | kwargs)), option)


def test_the_pipeline_functions_take_only_named_settings(ours):
    with pytest.raises(TypeError):
        txt2img(ours("sd1"), "the cat", 10)  # steps must be named
    with pytest.raises(TypeError):
        txt2img(ours("sd1"), "the cat", stepz=10)  # a typo is not swallowed by **kwargs


# --------------------------------------------------------------------------------------------
# images and masks
# --------------------------------------------------------------------------------------------

IMAGES = {
    "rank 2": (torch.zeros(SIZE, SIZE), "shape"),
    "rank 5": (torch.zeros(1, 1, 3, SIZE, SIZE), "shape"),
    "4 channels": (torch.zeros(1, 4, SIZE, SIZE), "shape"),
    "1 channel": (torch.zeros(1, 1, SIZE, SIZE), "shape"),
    "batch of 2": (torch.zeros(2, 3, SIZE, SIZE), "shape"),
    "integers": (torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8), "floating point"),
    "0..255": (torch.full((1, 3, SIZE, SIZE), 200.0), "x / 127.5 - 1"),
    "below -1": (torch.full((1, 3, SIZE, SIZE), -3.0), "[-1, 1]"),
    "nan": (torch.full((1, 3, SIZE, SIZE), NAN), "NaN"),
    "numpy array": (np.zeros((SIZE, SIZE, 3), np.uint8), "PIL image, a path"),
    "None": (None, "PIL image, a path"),
    "empty PIL": (Image.new("RGB", (0, 0)), "empty"),
    "F PIL above 255": (Image.fromarray(np.full((SIZE, SIZE), 300.0, np.float32)), "0..255"),
    "I PIL above 65535": (Image.fromarray(np.full((SIZE, SIZE), 70000, np.int32)), "0..65535"),
}


@pytest.mark.parametrize("case", IMAGES)
def test_bad_images_name_the_expected_shape_and_range(case):
    image, expected = IMAGES[case]
    assert expected in _refused(lambda: image_to_tensor(image), "image")


def test_image_paths(tmp_path):
    make_image().save(tmp_path / "image.png")
    assert torch.equal(image_to_tensor(str(tmp_path / "image.png")), pil_to_tensor(make_image()))
    assert torch.equal(image_to_tensor(tmp_path / "image.png"), pil_to_tensor(make_image()))
    (tmp_path / "notes.txt").write_text("not a picture")
    for path, expected in ((tmp_path / "missing.png", "does not exist"), (tmp_path, "is a folder"),
                           (tmp_path / "notes.txt", "cannot read")):
        assert expected in _refused(lambda: image_to_tensor(str(path)), "image")


def test_a_16_bit_png_is_scaled_by_65535_not_clipped_to_white(tmp_path):
    ramp = np.linspace(0, 65535, SIZE * SIZE).reshape(SIZE, SIZE).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    with Image.open(tmp_path / "ramp16.png") as opened:
        assert opened.mode.startswith("I")  # Pillow opens it as a 16-bit (or 32-bit) integer image
    x = image_to_tensor(str(tmp_path / "ramp16.png"))
    expected = torch.from_numpy(ramp.astype(np.float64) / 65535.0 * 2 - 1).float()
    assert torch.allclose(x[0, 0], expected, atol=1e-6) and torch.equal(x[0, 0], x[0, 2])
    assert float((x > 0.99).float().mean()) < 0.01  # before: 99.5% white


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "YCbCr", "F"])
def test_other_pil_modes_convert_like_pillow_to_rgb(mode):
    base = make_image()
    image = base.convert("L").convert("F") if mode == "F" else base.convert(mode)  # F: Pillow's 0..255 scale
    reference = image.convert("RGBA").convert("RGB") if mode == "P" else image.convert("RGB")
    expected = torch.from_numpy(np.asarray(reference, np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    assert torch.allclose(image_to_tensor(image), expected, atol=1e-6)


MASKS = {
    "rank 5": (torch.zeros(1, 1, 1, SIZE, SIZE), "shape"),
    "3 channels": (torch.zeros(1, 3, SIZE, SIZE), "shape"),
    "0..255": (torch.full((SIZE, SIZE), 255.0), "divide by 255"),
    "negative": (torch.full((SIZE, SIZE), -1.0), "[0, 1]"),
    "nan": (torch.full((SIZE, SIZE), NAN), "NaN"),
    "string of a missing file": ("no-such-mask.png", "does not exist"),
    "a list": ([[1, 0]], "PIL image, a path"),
}


@pytest.mark.parametrize("case", MASKS)
def test_bad_masks(case):
    mask, expected = MASKS[case]
    assert expected in _refused(lambda: mask_to_tensor(mask), "mask")


def test_mask_forms_that_are_accepted(tmp_path):
    make_mask().save(tmp_path / "mask.png")
    reference = mask_to_tensor(make_mask())
    as_tensor = torch.from_numpy(np.asarray(make_mask(), np.float32) / 255)
    for form in (str(tmp_path / "mask.png"), as_tensor, as_tensor[None], as_tensor[None, None],
                 make_mask().convert("RGB"), Image.merge("LA", (make_mask(), Image.new("L", make_mask().size)))):
        assert torch.equal(mask_to_tensor(form), reference)


def test_a_mask_with_nothing_to_repaint_is_refused(ours, monkeypatch):
    sd = ours("sd1")
    _NoNetworks(sd, monkeypatch)
    black = Image.new("L", (SIZE, SIZE))
    assert "nothing to repaint" in _refused(lambda: inpaint(sd, make_image(), black, "the cat", **FAST), "mask")


def test_image_and_mask_sizes(ours, monkeypatch):
    sd = ours("sd1")
    _NoNetworks(sd, monkeypatch)
    odd = Image.new("RGB", (SIZE + 1, SIZE))
    assert "resize or crop it to 32x32" in _refused(lambda: img2img(sd, odd, "the cat", **FAST), "image")
    small_mask = Image.new("L", (SIZE, SIZE // 2), 255)
    _refused(lambda: inpaint(sd, make_image(), small_mask, "the cat", **FAST), "mask")


def test_img2img_strength_refusals(ours, monkeypatch):
    sd = ours("sd1")
    _NoNetworks(sd, monkeypatch)
    for strength, option in ((NAN, "strength"), (1.5, "strength"), (1.0, "strength_rule")):  # compvis at 1
        _refused(lambda: img2img(sd, make_image(), "the cat", strength=strength, **FAST), option)
    _refused(lambda: img2img(sd, make_image(), "the cat", strength_rule="auto", **FAST), "strength_rule")


def test_a_strength_that_leaves_no_step_says_so(ours):
    with pytest.warns(NoDenoisingWarning, match="leaves no denoising step"):
        result = img2img(ours("sd1"), make_image(), "the cat", strength=0.3, steps=2, seed=0, output="latent")
    assert result.trajectory is None and result.latents.shape == (1, 4, SIZE // 2, SIZE // 2)


def test_inpainting_models_are_refused_by_txt2img_and_img2img(ours, monkeypatch):
    sd = ours("sd1-inpaint")
    _NoNetworks(sd, monkeypatch)
    _refused(lambda: txt2img(sd, "the cat", height=SIZE, width=SIZE, **FAST), "model")
    _refused(lambda: img2img(sd, make_image(), "the cat", **FAST), "model")


# --------------------------------------------------------------------------------------------
# NaN/inf from the model: never a silent black picture
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fresh(tiny):
    """A private copy of the tiny SD 1.x model, free to be damaged."""
    return StableDiffusion.from_pretrained(tiny("sd1")[0], torch_dtype=torch.float32)


def test_nan_unet_weights_are_named_and_nothing_is_returned(fresh):
    with torch.no_grad():
        fresh.unet.out[2].weight[0, 0, 0, 0] = NAN
    message = _refused(lambda: txt2img(fresh, "the cat", height=SIZE, width=SIZE, **FAST), "", CheckpointError)
    assert "out.2.weight" in message and "damaged" in message


def test_nan_vae_weights_stop_after_the_decode_or_warn_when_asked(fresh):
    with torch.no_grad():
        fresh.vae.decoder.conv_out.bias[0] = INF
    message = _refused(lambda: txt2img(fresh, "the cat", height=SIZE, width=SIZE, **FAST), "", CheckpointError)
    assert "decoded images" in message and "conv_out.bias" in message
    with pytest.warns(NonFiniteOutputWarning, match="decoded images"):
        result = txt2img(fresh, "the cat", height=SIZE, width=SIZE, non_finite="warn", **FAST)
    assert len(result.images) == 1  # kept, as asked, with the warning


def test_non_finite_latents_from_sound_weights_name_the_likely_cause(fresh):
    message = _refused(lambda: txt2img(fresh, "the cat", height=SIZE, width=SIZE, guidance_scale=1e38, **FAST),
                       "non_finite")
    assert "guidance scale" in message and "step" in message


# --------------------------------------------------------------------------------------------
# seeds and metadata
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, None])
def test_a_random_seed_is_reported_and_written_and_reproduces_the_image(ours, seed):
    sd = ours("sd1")
    first = txt2img(sd, "the cat", height=SIZE, width=SIZE, steps=2, sampler="ddim", seed=seed, output="latent")
    assert 0 <= first.seed <= 2**32 - 1 and f"Seed: {first.seed}," in first.infotext()
    again = txt2img(sd, "the cat", height=SIZE, width=SIZE, steps=2, sampler="ddim", seed=first.seed, output="latent")
    assert torch.equal(first.latents, again.latents)


def test_the_largest_seed_is_honoured_exactly(ours):
    result = txt2img(ours("sd1"), "the cat", height=SIZE, width=SIZE, steps=1, sampler="ddim", seed=2**32 - 1,
                     output="latent", return_trajectory=True)
    expected = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(2**32 - 1))
    assert torch.equal(result.trajectory.x[0], expected) and result.infotext().count("Seed: 4294967295") == 1


# --------------------------------------------------------------------------------------------
# nothing changed behind the caller's back
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_memory_options_leave_the_model_as_they_found_it(tiny, dtype, cpu_answers):
    """Under every CPU answer (prepacked convolutions or plain ones): during sampling the options are in
    force (every convolution runs channels-last: plain ones hold NHWC weights, prepacked ones always do),
    a prepacked weight is never unpacked or packed again by them, and afterwards all is as before."""
    from diffusion_notes.models.prepacked import PrepackedConv2d, runs_channels_last

    sd = StableDiffusion.from_pretrained(tiny("sd1")[0], torch_dtype=dtype)
    prepacked = [m for m in sd.unet.modules() if isinstance(m, PrepackedConv2d)]
    assert bool(prepacked) == cpu_answers.prepacking  # the loader prepacks for the CPU where it can
    txt2img(sd, "the cat", height=SIZE, width=SIZE, **FAST)  # once without options: weights prepacked if they can be
    packed = [m._packed for m in prepacked]
    assert all((p is not None) == cpu_answers.prepacks(dtype) for p in packed)
    conv = sd.unet.input_blocks[0][0].weight
    before = (sd.prompt_encoder.text_encoders[0].device, next(sd.prompt_encoder.parameters()).dtype,
              conv.is_contiguous(), next(sd.vae.parameters()).is_contiguous())
    seen = []

    def callback(i, t, x, pred_x0):  # during sampling: the options are in force
        seen.append((next(sd.prompt_encoder.parameters()).dtype, runs_channels_last(sd.unet)))

    memory = MemoryOptions(offload_text_encoder=True, channels_last=True, upcast_attention=True)
    for _ in range(2):
        txt2img(sd, "the cat", height=SIZE, width=SIZE, memory=memory, callback=callback, **FAST)
    assert seen and all(s == (torch.float32, True) for s in seen)
    assert all(m._packed is p for m, p in zip(prepacked, packed))  # never unpacked / re-packed per call
    weight = sd.unet.input_blocks[0][0].weight
    after = (sd.prompt_encoder.text_encoders[0].device, next(sd.prompt_encoder.parameters()).dtype,
             weight.is_contiguous(), next(sd.vae.parameters()).is_contiguous())
    assert after == before and before[1] == dtype
    assert not any(getattr(m, "upcast_attention", False) for m in sd.unet.modules())


def test_the_inpainting_blend_returns_a_new_tensor_through_step_hook(ours):
    """4-channel inpainting: the x the callback sees after each step is the blend, and the blend hook
    never writes into the tensor it is given."""
    from diffusion_notes import pipeline
    from diffusion_notes.sampling import SamplerSettings

    z0, noise = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1
    grid = SamplerSettings("ddim", 4).grid(ours("sd1").schedule)
    hook = blend_known_region(z0, mask, noise, grid)
    x = torch.randn(1, 4, 4, 4)
    x_before = x.clone()
    blended = hook(0, 0, x, x)
    assert torch.equal(x, x_before) and blended is not x
    assert torch.equal(blended[..., :2], x[..., :2]) and torch.allclose(blended[..., 2:],
                                                                        grid.noised(1, z0, noise)[..., 2:])
    assert torch.equal(hook(3, 0, x, x)[..., 2:], z0[..., 2:])  # after the last step: z_0 itself


def test_help_shows_every_option_of_the_methods_too():
    import inspect

    for name in ("txt2img", "img2img", "inpaint"):
        parameters = inspect.signature(getattr(StableDiffusion, name)).parameters
        assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in parameters.values()), name
        assert {"sampler", "steps", "sigma_schedule", "spacing", "eta", "sampler_options", "seed"} <= set(parameters)

"""The shipped miniature: its files, its header, and its quality under the independent judge.

The judge (``diffusion_notes.mini_sd.judge``) is a logistic regression fitted on the real 8x8 training
digits; it has never seen a generated image. Generation: PLMS, 50 steps, 5 images per digit for the
prompts "a handwritten zero" ... "a handwritten nine", fixed seed (1234, not the seed of the model
card's figures).
"""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.checkpoints.metadata import from_header, read_header
from diffusion_notes.mini_sd import load_mini_sd, tokenizer_path, weights_path
from diffusion_notes.mini_sd.judge import generated_agreement
from diffusion_notes.pipeline import default_size

SEED = 1234
MARGIN = 0.1  # measured with this seed: 1.00 guided, 0.76 unguided (fp32)


def test_shipped_files_are_small_and_say_what_they_are():
    files = [weights_path(), *tokenizer_path().iterdir()]
    assert sum(f.stat().st_size for f in files) <= 15e6  # the budget for weights + tokenizer
    meta = from_header(read_header(weights_path()))
    assert meta.native_size == (32, 32) and meta.prediction_type == "eps" and meta.text_heads == (4,)
    assert meta.num_heads == 4 and 0.05 < meta.scale_factor < 5


@pytest.fixture(scope="module")
def mini():
    return load_mini_sd(torch_dtype=torch.float32)


def test_guided_samples_show_the_named_digit_and_guidance_helps(mini):
    assert default_size(mini) == (32, 32)
    guided, predicted = generated_agreement(mini, per_digit=5, guidance_scale=7.5, seed=SEED)
    unguided, _ = generated_agreement(mini, per_digit=5, guidance_scale=1.0, seed=SEED)
    # The bar: >= 90% at guidance 7.5 (at most 5 of these 50 images wrong), and guidance must raise
    # agreement by at least MARGIN over no guidance (guidance_scale=1).
    assert guided >= 0.9, predicted
    assert guided - unguided >= MARGIN, (guided, unguided)


def test_bf16_default_path_meets_the_same_bar():
    # bf16 is the CPU default where the CPU has native bf16 (diffusion_notes.precision); the test suite pins
    # fp32, so the bf16 path is asked for explicitly here. bf16 convolutions this small are about 10x slower
    # than fp32 on the reference CPU, so one image per digit (at most one of ten wrong); MODEL_CARD.md has
    # the 100-image figure.
    mini = load_mini_sd(torch_dtype=torch.bfloat16)
    guided, predicted = generated_agreement(mini, per_digit=1, guidance_scale=7.5, seed=SEED)
    assert guided >= 0.9, predicted

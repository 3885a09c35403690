r"""A noise-conditional digit classifier :math:`p_\phi(y \mid x_t, t)` for classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

Classifier guidance needs :math:`\nabla_{x_t}\log p(y \mid x_t)` at every noise level the sampler visits, so
the classifier is trained on noisy images :math:`x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\epsilon`
with the timestep as an input (the paper uses the UNet's downsampling half; here three small convolutions
with the sinusoidal timestep embedding added after the first, 8x8 -> 4x4 -> 2x2, then a linear layer).
Trained by ``scripts/train_noisy_classifier.py`` on the digits' training split with the digits model's
schedule; the shipped weights are ``weights/noisy_classifier.safetensors``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from ..models.embeddings import timestep_embedding
from .digits import NUM_CLASSES

__all__ = ["NoisyDigitClassifier", "CLASSIFIER_FILE", "save_classifier", "load_classifier", "log_prob_of"]

#: The shipped weights, relative to ``diffusion_notes/toy``.
CLASSIFIER_FILE = "weights/noisy_classifier.safetensors"


class NoisyDigitClassifier(nn.Module):
    """``classifier(x_t, t)`` -> logits (B, 10) of :math:`p_\\phi(y \\mid x_t, t)`; x_t: (B, 1, 8, 8), t: (B,) real timesteps."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.width = width
        self.time_mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width))
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)  # 8x8 -> 4x4
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)  # 4x4 -> 2x2
        self.head = nn.Linear(2 * width * 4, NUM_CLASSES)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.width).to(x.dtype))
        h = F.silu(self.conv1(x) + emb[:, :, None, None])
        h = F.silu(self.conv2(h))
        h = F.silu(self.conv3(h))
        return self.head(h.flatten(1))


def save_classifier(model: NoisyDigitClassifier, path, metadata: dict) -> None:
    """Write the weights and the run's metadata (never over an existing file: the script checks first)."""
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"width": str(model.width), **{k: str(v) for k, v in metadata.items()}})
    os.replace(tmp, path)


def load_classifier(path=None) -> tuple[NoisyDigitClassifier, dict]:
    """``(classifier, metadata)``: the shipped weights by default, in eval mode, parameters frozen."""
    path = Path(path) if path is not None else Path(str(resources.files("diffusion_notes.toy").joinpath(CLASSIFIER_FILE)))
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        state = {name: f.get_tensor(name) for name in f.keys()}
    model = NoisyDigitClassifier(int(metadata["width"]))
    model.load_state_dict(state)
    return model.eval().requires_grad_(False), metadata


def log_prob_of(classifier: NoisyDigitClassifier, labels: torch.Tensor):
    r"""``log_prob(x_t, t)`` -> :math:`\log p_\phi(y_i \mid x_t, t)` per sample, for
    :func:`~diffusion_notes.gradient_guidance.classifier_guided_eps_model`."""

    def log_prob(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = classifier(x, t)
        return logits.log_softmax(1).gather(1, labels[:, None].to(logits.device))[:, 0]

    return log_prob



"""Saving and loading the toy model: safetensors weights plus a JSON-able metadata header.

The header records everything needed to rebuild the network and to reproduce the file
(UNet config, schedule name and length, seed, step count, the exact training command), so a
checkpoint never depends on defaults that may change in a later version of the code.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from ..schedules import NoiseSchedule
from .model import DigitsUNet, UNetConfig, edm_network

__all__ = ["WEIGHTS_FILE", "FLOW_WEIGHTS_FILE", "EDM_WEIGHTS_FILE", "pretrained_path", "load_pretrained_flow", "load_pretrained_edm", "save_checkpoint", "load_checkpoint", "read_metadata", "load_pretrained"]

#: The weights shipped with the package, relative to ``diffusion_notes/toy``.
WEIGHTS_FILE = "weights/digits_ddpm.safetensors"
#: The same network trained by conditional flow matching (``train-toy --objective flow``): it predicts the velocity.
FLOW_WEIGHTS_FILE = "weights/digits_flow.safetensors"
#: The same network trained with EDM's preconditioning and loss (``train-toy --objective edm``).
EDM_WEIGHTS_FILE = "weights/digits_edm.safetensors"


def save_checkpoint(model: DigitsUNet, path, schedule_name: str, num_timesteps: int, extra: dict | None = None) -> None:
    """Write ``model``'s weights and metadata to ``path`` (via a temporary file, so a crash
    mid-write never leaves a truncated checkpoint behind)."""
    metadata = {
        "unet_config": json.dumps(model.config.to_dict()),
        "schedule": schedule_name,
        "num_timesteps": str(num_timesteps),
        "parameterization": "eps",
        **{key: str(value) for key, value in (extra or {}).items()},
    }
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def read_metadata(path) -> dict[str, str]:
    """The string-to-string metadata header of a checkpoint, without loading the weights."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def load_checkpoint(path) -> tuple[DigitsUNet, NoiseSchedule, dict[str, str]]:
    """``(model, schedule, metadata)`` from a file written by :func:`save_checkpoint`; the model is in eval mode."""
    metadata = read_metadata(path)
    model = DigitsUNet(UNetConfig.from_dict(json.loads(metadata["unet_config"])))
    state = {}
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            state[name] = f.get_tensor(name)
    model.load_state_dict(state)
    model.eval().requires_grad_(False)
    schedule = NoiseSchedule.from_name(metadata["schedule"], int(metadata["num_timesteps"]))
    return model, schedule, metadata


def pretrained_path(weights_file: str = WEIGHTS_FILE) -> Path:
    """Where the shipped weights live inside the installed package."""
    return Path(str(resources.files("diffusion_notes.toy").joinpath(weights_file)))


def load_pretrained_flow() -> DigitsUNet:
    """The digits network trained by conditional flow matching (SD3's objective) with the DDPM model's recipe.

    ``model(x, t, c)`` predicts the velocity :math:`\epsilon - x_0` of the straight path at the timestep
    :math:`t = 1000\,\sigma`; sample it with :func:`diffusion_notes.flow_sampling.sample_flow`."""
    model, _, metadata = load_checkpoint(pretrained_path(FLOW_WEIGHTS_FILE))
    if metadata.get("parameterization") != "flow":
        raise ValueError(f"{FLOW_WEIGHTS_FILE} is not a flow-matching checkpoint (parameterization "
                         f"{metadata.get('parameterization')!r})")
    return model


def load_pretrained_edm():
    """The digits network trained with EDM's preconditioning and loss (Karras et al. 2022, Table 1), as its
    preconditioned denoiser ``D(x, sigma, c)`` (:func:`diffusion_notes.edm.preconditioned_denoiser`), in the σ view:
    ``x = x_0 + sigma n``. Sample it with :func:`diffusion_notes.edm.sample_edm`."""
    from ..edm import preconditioned_denoiser

    model, _, metadata = load_checkpoint(pretrained_path(EDM_WEIGHTS_FILE))
    if metadata.get("parameterization") != "edm":
        raise ValueError(f"{EDM_WEIGHTS_FILE} is not an EDM checkpoint (parameterization {metadata.get('parameterization')!r})")
    return preconditioned_denoiser(edm_network(model), float(metadata["sigma_data"]))


def load_pretrained() -> tuple[DigitsUNet, NoiseSchedule]:
    """The class-conditional digits DDPM shipped with the package, and its noise schedule.

    ``model(x, t, c)`` predicts the noise; ``c = NULL_LABEL`` (10) gives the unconditional
    prediction used by classifier-free guidance. See ``toy/MODEL_CARD.md`` for how it was trained.
    """
    model, schedule, _ = load_checkpoint(pretrained_path())
    return model, schedule

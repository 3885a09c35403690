"""k-diffusion's ``sampling.py`` and ``external.py`` as a test oracle, without the package's heavy ``__init__``.

k-diffusion 0.1.1's ``__init__`` imports scikit-image, clip, wandb, and its ``utils.py`` imports torchvision
(which this project keeps out: docs/NOTES). ``sampling.py`` and ``external.py`` need only torch, scipy,
torchsde, torchdiffeq and one helper from ``utils``, ``append_dims``; that helper is provided here as
k-diffusion writes it, and both files are imported by path into a bare ``k_diffusion`` package.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path


def _append_dims(x, target_dims):
    """k_diffusion.utils.append_dims, verbatim: appends dimensions to the end of a tensor until it has target_dims."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def load():
    """``(sampling, external)`` modules of k-diffusion; raises ImportError when it (or a dependency) is missing."""
    if "k_diffusion.sampling" in sys.modules and "k_diffusion.external" in sys.modules:  # loaded by another test module
        return sys.modules["k_diffusion.sampling"], sys.modules["k_diffusion.external"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (pip install k-diffusion --no-deps torchsde torchdiffeq trampoline)")
    folder = Path(list(spec.submodule_search_locations)[0])
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(folder)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules.update({"k_diffusion": package, "k_diffusion.utils": utils})
    modules = []
    for name in ("sampling", "external"):
        file_spec = importlib.util.spec_from_file_location(f"k_diffusion.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[f"k_diffusion.{name}"] = module
        file_spec.loader.exec_module(module)
        setattr(package, name, module)
        modules.append(module)
    return tuple(modules)

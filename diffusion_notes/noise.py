"""Where Gaussian noise comes from: one function, so that one seed means the same noise everywhere."""

from __future__ import annotations

import torch

__all__ = ["randn"]


def randn(shape, generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the *generator's* device, then moved to ``device`` and cast to ``dtype``.

    A CPU generator (the default everywhere in this package) therefore gives the same numbers whether
    the model runs on CPU or CUDA; low-precision noise is drawn in float32 and rounded afterwards.
    diffusers: ``utils.torch_utils.randn_tensor``; CompVis: ``torch.randn(..., device=model.device)``.
    """
    draw_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=draw_dtype).to(device=device, dtype=dtype)

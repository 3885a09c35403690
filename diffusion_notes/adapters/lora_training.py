r"""Training a LoRA: trainable low-rank paths beside frozen layers, and saving them as a kohya file.

While training, each target layer :math:`W_0` is wrapped as :math:`h = W_0 x + \frac{\alpha}{r} B A x`
(Hu et al. 2021, Eq. 3; :class:`LoRAWrapped`) with only :math:`A` (``lora_down``) and :math:`B` (``lora_up``)
trainable; :math:`A` starts as sd-scripts' (Kaiming-uniform) and :math:`B` at zero, so training starts from the
model itself. For a convolution, :math:`A` is a convolution with the layer's kernel size, stride and padding into
:math:`r` channels and :math:`B` a 1x1 convolution (sd-scripts' ``LoRAModule``, kohya's "LoCon" for 3x3 kernels).
:func:`kohya_state_dict` writes the factors under kohya's ``lora_unet_*.lora_down.weight`` /
``.lora_up.weight`` / ``.alpha`` names, which :func:`~diffusion_notes.adapters.lora.load_lora` (and
``--lora``, AUTOMATIC1111, diffusers) merge back as :math:`W_0 + \frac{\alpha}{r} B A`.

Used by ``scripts/train_adapters.py`` (a style LoRA) and ``scripts/distill_lcm_lora.py`` (LCM-LoRA).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .lora_keys import layer_names

__all__ = ["LoRAWrapped", "lora_targets", "attach_lora", "kohya_names", "kohya_state_dict", "latent_moments"]


class LoRAWrapped(nn.Module):
    r"""A frozen layer plus its low-rank path: :math:`h = W_0 x + \frac{\alpha}{r} B A x` (Hu et al. 2021, Eq. 3).

    For a convolution :math:`A` has the layer's kernel, stride and padding and :math:`B` is 1x1 (sd-scripts' ``LoRAModule``)."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        if isinstance(base, nn.Linear):
            self.down = nn.Linear(base.in_features, rank, bias=False)
            self.up = nn.Linear(rank, base.out_features, bias=False)
        else:
            self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, stride=base.stride, padding=base.padding,
                                  bias=False)
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        with torch.no_grad():  # sd-scripts: kaiming_uniform_(a=sqrt(5)) for down, zeros for up
            bound = 1 / math.sqrt(self.down.weight[0].numel())
            self.down.weight.copy_(torch.rand(self.down.weight.shape, generator=generator) * 2 * bound - bound)
            self.up.weight.zero_()

    def forward(self, x):
        return self.base(x) + self.scale * self.up(self.down(x))


def lora_targets(unet: nn.Module, convolutions: bool = False) -> list[str]:
    """sd-scripts' default UNet targets: every Linear and 1x1 convolution inside a transformer block; with
    ``convolutions`` also every other Linear and convolution of the UNet but its first and last (LCM-LoRA's
    targets: the ResNet blocks' convolutions and time projections, the down- and upsamplers)."""
    names = []
    for name, module in unet.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        attention = ".proj_in" in name or ".proj_out" in name or ".transformer_blocks." in name
        if attention and (isinstance(module, nn.Linear) or module.kernel_size == (1, 1)):
            names.append(name)
        elif convolutions and not attention and name.startswith(("input_blocks.", "middle_block.", "output_blocks.")) \
                and name != "input_blocks.0.0":
            names.append(name)
    return names


def attach_lora(unet: nn.Module, targets: list[str], rank: int, alpha: float,
                generator: torch.Generator) -> dict[str, LoRAWrapped]:
    """Replace each of ``targets`` (module paths in ``unet``) by a :class:`LoRAWrapped` around it."""
    wrapped = {}
    for name in targets:
        parent, _, child = name.rpartition(".")
        module = LoRAWrapped(unet.get_submodule(name), rank, alpha, generator)
        setattr(unet.get_submodule(parent), child, module)
        wrapped[name] = module
    return wrapped


def kohya_names(sd) -> dict[str, str]:
    """``{UNet module path: kohya name}`` in SD 1.x's spelling (diffusers module paths with ``_``)."""
    names = {}
    for kohya, target in layer_names(sd, "kohya").items():
        path = target.removeprefix("unet.")
        if target.startswith("unet.") and kohya != "lora_unet_" + path.replace(".", "_"):  # not the sgm spelling
            names[path] = kohya
    return names


def kohya_state_dict(names: dict[str, str], wrapped: dict[str, LoRAWrapped], alpha: float,
                     dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The trained factors under their kohya names (``names`` from :func:`kohya_names`, taken before wrapping)."""
    tensors = {}
    for path, module in wrapped.items():
        key = names[path]
        tensors[f"{key}.lora_down.weight"] = module.down.weight.detach().to(dtype).clone().contiguous()
        tensors[f"{key}.lora_up.weight"] = module.up.weight.detach().to(dtype).clone().contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
    return tensors


@torch.no_grad()
def latent_moments(sd, images: torch.Tensor) -> torch.Tensor:
    """The frozen encoder's q(z|x) (mean and log-variance), computed once; z is drawn anew at every step."""
    return sd.vae.quant_conv(sd.vae.encoder(images))

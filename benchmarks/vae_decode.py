"""Benchmark 3b: the VAE decode of txt2img alone, ours vs diffusers' ``AutoencoderKL`` (fp32), on the CPU.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.vae_decode --sides 32 64      # 256x256 and 512x512 images

The SD 1.5 autoencoder (83.7M parameters) with random weights; ours holds diffusers' very tensors
(renamed by ``checkpoints.diffusers_layout``, shared). "ours" is the decoder as the loaders leave it
for the CPU, convolutions prepacked (``models.prepacked``); ``--plain`` adds ours with plain
``nn.Conv2d``; ``--precisions fp32 default`` adds ours in this CPU's default dtype (bf16 where the CPU has
native bf16), against diffusers in fp32, its default. Batch 1, one warm-up round, then alternated rounds;
medians, min-max spread and the relative error of the image.
"""

from __future__ import annotations

import argparse
import copy

import torch

from diffusion_notes.precision import default_dtype, dtype_name

from .common import alternate, configure_threads, machine, requested_dtypes, table
from .random_models import vae

def vae_pair(size: str = "full", seed: int = 0):
    """``(ours, ours_plain, theirs)``: diffusers' AutoencoderKL with random weights (SD 1.5's, or a tiny one
    for the smoke test), ours prepacked and plain on its tensors."""
    from diffusion_notes.checkpoints import diffusers_layout as layout
    from diffusion_notes.models.prepacked import prepack_convolutions
    from diffusion_notes.models.vae import AutoencoderKL

    torch.manual_seed(seed)
    theirs = vae(size == "full").eval().requires_grad_(False)
    config = layout.vae_config_from_diffusers(dict(theirs.config))

    def ours_on_theirs():
        with torch.device("meta"):
            ours = AutoencoderKL(config)
        ours.load_state_dict(layout.vae_from_diffusers(theirs.state_dict(), config), strict=True, assign=True)
        return ours.eval().requires_grad_(False)

    return prepack_convolutions(ours_on_theirs()), ours_on_theirs(), theirs


def prepack_copy(plain, dtype: torch.dtype):
    """A prepacked copy of ``plain`` in ``dtype`` (as the loaders leave a VAE loaded in that dtype)."""
    from diffusion_notes.models.prepacked import prepack_convolutions

    return prepack_convolutions(copy.deepcopy(plain).to(dtype))


def decode(vae, z: torch.Tensor) -> torch.Tensor:
    """``vae.decode`` of ``z`` in the VAE's dtype, as float32."""
    return vae.decode(z.to(next(vae.parameters()).dtype)).float()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["full", "tiny"], default="full", help="tiny: the smoke test's VAE")
    p.add_argument("--sides", type=int, nargs="+", default=[32, 64], help="latent sides (default 32 64)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--plain", action="store_true", help="also time ours with plain nn.Conv2d")
    p.add_argument("--precisions", nargs="+", default=["fp32"],
                   help="ours in fp32, bf16, default (this CPU's default dtype); diffusers stays fp32")
    args = p.parse_args(argv)
    configure_threads(args.threads)
    ours, plain, theirs = vae_pair(args.size)
    factor = 2 ** (len(theirs.config.block_out_channels) - 1)
    contestants = {"ours": ours, **({"ours, plain nn.Conv2d": plain} if args.plain else {})}
    for dtype in requested_dtypes(args.precisions):
        if dtype != torch.float32:
            default = " (our default)" if dtype == default_dtype("cpu") else ""
            contestants[f"ours {dtype_name(dtype)}{default}"] = prepack_copy(plain, dtype)
    rows = []
    for side in args.sides:
        z = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            reference = theirs.decode(z).sample
            errors = {name: relative_error(decode(vae, z), reference) for name, vae in contestants.items()}
        runs = {name: (lambda vae=vae: decode(vae, z)) for name, vae in contestants.items()}
        runs["diffusers"] = lambda: theirs.decode(z).sample
        timings = alternate(runs, args.repeats, args.warmup)
        print(f"  measured {side}x{side}", flush=True)
        for name in contestants:
            rows.append([f"1x4x{side}x{side} -> {side * factor}x{side * factor}", name, timings.median(name),
                         timings.spread(name), timings.median("diffusers"), timings.spread("diffusers"),
                         f"{timings.median(name) / timings.median('diffusers'):.2f}", f"{errors[name]:.1e}"])
    out = table(["decode", "ours", "ours s", "ours spread", "diffusers s", "diffusers spread", "ours/diffusers",
                 "rel. error"], rows)
    params = sum(p.numel() for p in theirs.parameters()) / 1e6
    print(f"VAE decode, {params:.1f}M parameters, diffusers in fp32, median of {args.repeats} alternated rounds; {machine()}")
    print(out)
    return out


if __name__ == "__main__":
    main()

r"""Train the miniature Stable Diffusion from scratch: ``python -m diffusion_notes train-mini-sd``.

Three stages, as Stable Diffusion itself was built (Rombach et al. 2022):

1. the **autoencoder** (``AutoencoderKL``, f = 8) on the 32x32 digits, with reconstruction + KL
   (:func:`diffusion_notes.training.vae_loss`), then its latent **scale factor** measured on the data
   (:func:`diffusion_notes.training.measure_scale_factor`);
2. a **tokenizer** for the captions' words, in CLIP's format
   (:func:`diffusion_notes.training.build_word_tokenizer`);
3. the **UNet and the CLIP text encoder, jointly** (LDM Eq. 3 optimises :math:`\tau_\theta` and
   :math:`\epsilon_\theta` together), on LDM Eq. 2's loss over the frozen autoencoder's latents
   (:func:`diffusion_notes.training.latent_diffusion_loss`), with 10% of the captions dropped to
   ``""`` for classifier-free guidance. The file holds an exponential moving average of both.

Every random choice comes from one seeded generator and the run uses one thread by default, so the
same command gives the same weights on the same software stack.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..models.config import AutoencoderConfig, UNetConfig
from ..models.vae import AutoencoderKL, DiagonalGaussianDistribution
from ..toy.train import update_ema
from ..training import (assemble_stable_diffusion, build_text_encoder, build_word_tokenizer, latent_diffusion_loss,
                        measure_scale_factor, vae_loss)
from .data import IMAGE_SIZE, WORDS, load_images, sample_captions

#: What the command writes into ``--out-dir`` (the package ships them in ``mini_sd/weights``).
WEIGHTS_NAME, TOKENIZER_NAME, DEFAULT_OUT = "mini_sd.safetensors", "tokenizer", "mini_sd"

__all__ = ["MiniConfig", "TrainResult", "train_autoencoder", "train_diffusion", "train", "main"]


@dataclass(frozen=True)
class MiniConfig:
    """Sizes and hyperparameters of the miniature; the defaults made the shipped weights."""

    seed: int = 0
    vae: AutoencoderConfig = field(default_factory=lambda: AutoencoderConfig(ch=32, ch_mult=(1, 1, 2, 2),
                                                                             num_res_blocks=1))
    vae_steps: int = 300
    vae_batch: int = 32
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6  # LDM's "KL-reg" weight
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(
        model_channels=64, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 1),
        transformer_depth_middle=1, context_dim=64, num_heads=4))
    text_width: int = 64
    text_layers: int = 3
    text_heads: int = 4  # 16 channels per head: not CLIP's 64, so the file must say it
    max_length: int = 77  # CLIP's 77 positions, as every released SD
    steps: int = 1000
    batch: int = 64
    lr: float = 1e-3
    p_uncond: float = 0.1
    ema_decay: float = 0.995

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    sd: object  # the StableDiffusion (EMA weights of UNet and text encoder), eval mode, frozen
    vae_losses: list[float]
    losses: list[float]
    seconds: dict  # wall seconds per stage
    cpu_seconds: dict  # CPU seconds per stage
    config: MiniConfig | None = None


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, mininterval=2.0)


def train_autoencoder(config: MiniConfig, images: torch.Tensor, generator: torch.Generator,
                      progress: bool = True) -> tuple[AutoencoderKL, list[float]]:
    """Stage 1: AdamW on :func:`vae_loss` (reconstruction + KL), cosine learning rate; returns the frozen VAE."""
    vae = AutoencoderKL(config.vae)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.vae_steps)
    losses = []
    with _bar(config.vae_steps, "autoencoder", progress) as bar:
        for _ in range(config.vae_steps):
            idx = torch.randint(0, images.shape[0], (config.vae_batch,), generator=generator)
            loss, rec, kl = vae_loss(vae, images[idx], config.kl_weight, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(rec.item() / images[0].numel())  # mean absolute error per pixel
            bar.set_postfix(l1=f"{losses[-1]:.4f}", kl=f"{kl.item():.0f}", refresh=False)
            bar.update()
    return vae.eval().requires_grad_(False), losses


def train_diffusion(config: MiniConfig, sd, moments: torch.Tensor, labels: torch.Tensor,
                    generator: torch.Generator, progress: bool = True) -> list[float]:
    """Stage 3: UNet and text encoder jointly on LDM Eq. 3, sampling :math:`z \\sim q(z|x)` from the
    frozen encoder's precomputed ``moments`` at every step; ``sd``'s UNet and text encoder end up
    holding the EMA weights."""
    trained = nn.ModuleList([sd.unet, sd.prompt_encoder.text_encoders[0]]).train().requires_grad_(True)
    ema = copy.deepcopy(trained).requires_grad_(False)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    losses = []
    with _bar(config.steps, "unet + text encoder", progress) as bar:
        for step in range(config.steps):
            idx = torch.randint(0, moments.shape[0], (config.batch,), generator=generator)
            z0 = sd.scale_factor * DiagonalGaussianDistribution(moments[idx]).sample(generator)
            captions = sample_captions(labels[idx], config.p_uncond, generator)
            loss = latent_diffusion_loss(sd, z0, captions, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            update_ema(ema, trained, config.ema_decay, step)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", refresh=False)
            bar.update()
    with torch.no_grad():
        for p, p_ema in zip(trained.parameters(), ema.parameters()):
            p.copy_(p_ema)
    trained.eval().requires_grad_(False)
    return losses


def train(config: MiniConfig = MiniConfig(), tokenizer_dir="mini_sd_tokenizer", progress: bool = True) -> TrainResult:
    """All three stages from scratch; deterministic given ``config.seed`` (and the thread count)."""
    torch.manual_seed(config.seed)  # weight initialisation
    generator = torch.Generator().manual_seed(config.seed)  # batches, timesteps, noise, captions
    images, labels = load_images("train")
    seconds, cpu = {}, {}

    def clock(stage, start, cpu_start):
        seconds[stage], cpu[stage] = time.perf_counter() - start, time.process_time() - cpu_start

    start, cpu_start = time.perf_counter(), time.process_time()
    vae, vae_losses = train_autoencoder(config, images, generator, progress)
    with torch.no_grad():
        moments = torch.cat([vae.quant_conv(vae.encoder(images[i : i + 256])) for i in range(0, len(images), 256)])
    scale_factor = measure_scale_factor(vae, images, generator=generator)
    clock("autoencoder", start, cpu_start)

    start, cpu_start = time.perf_counter(), time.process_time()
    tokenizer = build_word_tokenizer(WORDS, tokenizer_dir, config.max_length)
    text_encoder = build_text_encoder(tokenizer, config.text_width, config.text_layers, config.text_heads)
    sd = assemble_stable_diffusion(config.unet, vae, text_encoder, tokenizer, scale_factor,
                                   native_size=(IMAGE_SIZE, IMAGE_SIZE))
    losses = train_diffusion(config, sd, moments, labels, generator, progress)
    clock("diffusion", start, cpu_start)
    return TrainResult(sd.eval(), vae_losses, losses, seconds, cpu, config)


def plot_loss_curves(result: TrainResult, path, window: int = 25) -> None:
    """Both stages' losses (means of ``window`` steps) side by side, as a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..toy.train import smoothed

    fig, axes = plt.subplots(1, 2, figsize=(8, 3), dpi=100)
    for ax, losses, title, label in [
        (axes[0], result.vae_losses, "autoencoder: reconstruction", "mean |x - D(E(x))| per pixel"),
        (axes[1], result.losses, "UNet + text encoder: LDM Eq. 2", "||eps - eps_theta||^2"),
    ]:
        means = smoothed(losses, window)
        ax.plot([window * (i + 0.5) for i in range(len(means))], means)
        ax.set(xlabel="training step", ylabel=label, yscale="log", title=title)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_miniature(result: TrainResult, out_dir, command: str, threads: int, overwrite: bool = False) -> Path:
    """Write ``out_dir/mini_sd.safetensors`` (fp16, original single-file layout, settings and the
    training record in its header) next to the ``tokenizer/`` folder; returns the file's path."""
    out_dir = Path(out_dir)
    path = out_dir / WEIGHTS_NAME
    config = MiniConfig() if result.config is None else result.config
    stats = {
        "seed": config.seed, "threads": threads, "torch_version": torch.__version__, "command": command,
        "train_config": json.dumps(config.to_dict()),
        "vae_final_l1": f"{sum(result.vae_losses[-25:]) / len(result.vae_losses[-25:]):.5f}",
        "final_loss_mean_last_50": f"{sum(result.losses[-50:]) / len(result.losses[-50:]):.5f}",
        **{f"{stage}_seconds": f"{s:.1f}" for stage, s in result.seconds.items()},
        **{f"{stage}_cpu_seconds": f"{s:.1f}" for stage, s in result.cpu_seconds.items()},
    }
    half = copy.deepcopy(result.sd).to(torch.float16)
    half.save_single_file(path, overwrite=overwrite, metadata={"mini_sd." + k: str(v) for k, v in stats.items()})
    return path


def _parser() -> argparse.ArgumentParser:
    defaults = MiniConfig()
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_notes train-mini-sd",
        description="Train the miniature Stable Diffusion (digits, 32x32) from scratch on the CPU.")
    parser.add_argument("--out-dir", default=DEFAULT_OUT, help=f"folder to write {WEIGHTS_NAME}, tokenizer/ and "
                        f"loss_curves.png into (default: {DEFAULT_OUT})")
    parser.add_argument("--overwrite", action="store_true", help="replace the files in --out-dir if they exist")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"random seed (default: {defaults.seed})")
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps,
                        help=f"autoencoder training steps (default: {defaults.vae_steps})")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help=f"UNet + text encoder training steps (default: {defaults.steps})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine more threads were slower, "
                        "see the model card; one thread also makes the weights independent of the core count)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = [] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    out_dir = Path(args.out_dir)
    targets = [out_dir / WEIGHTS_NAME, out_dir / TOKENIZER_NAME, out_dir / "loss_curves.png"]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.overwrite:  # checked before training, so a mistyped command loses nothing
        print(f"error: {', '.join(existing)} already exist(s); pass --overwrite or choose another --out-dir",
              file=sys.stderr)
        return 1
    if min(args.steps, args.vae_steps, args.threads) < 1:
        print("error: --steps, --vae-steps and --threads must be at least 1", file=sys.stderr)
        return 2
    config = replace(MiniConfig(), seed=args.seed, steps=args.steps, vae_steps=args.vae_steps)
    print(f"training the miniature Stable Diffusion with {args.threads} thread(s): {config}")
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        if (out_dir / TOKENIZER_NAME).exists():
            shutil.rmtree(out_dir / TOKENIZER_NAME)
        result = train(config, out_dir / TOKENIZER_NAME, progress=not args.no_progress)
    finally:
        torch.set_num_threads(previous)
    command = shlex.join(["python", "-m", "diffusion_notes", "train-mini-sd", *argv])
    path = save_miniature(result, out_dir, command, args.threads, overwrite=True)
    plot_loss_curves(result, out_dir / "loss_curves.png")
    size = path.stat().st_size + sum(f.stat().st_size for f in (out_dir / TOKENIZER_NAME).iterdir())
    print(f"wrote {path} and {out_dir / TOKENIZER_NAME} ({size / 1e6:.2f} MB) after "
          f"{sum(result.seconds.values()):.1f} s wall, {sum(result.cpu_seconds.values()):.1f} s CPU "
          f"(per stage: {', '.join(f'{k} {v:.1f} s / {result.cpu_seconds[k]:.1f} s CPU' for k, v in result.seconds.items())})")
    return 0

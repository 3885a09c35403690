r"""Train the class-conditional digits DDPM: ``python -m diffusion_notes train-toy``.

The loop is DDPM's Algorithm 1 (Ho et al. 2020) with one addition from classifier-free
guidance (Ho & Salimans 2022, Algorithm 1): the label is replaced by the null label with
probability ``p_uncond``, so the same network also learns the unconditional noise prediction.

The run is a fixed number of steps with a fixed seed (never "train for N seconds"), so the
same command gives the same weights on the same software stack.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..edm import edm_loss, preconditioned_denoiser, sample_training_sigmas
from ..flow_matching import cfm_loss, flow_path, sample_logit_normal
from ..losses import p_losses
from ..schedules import NoiseSchedule
from .digits import load_split
from .model import NULL_LABEL, DigitsUNet, UNetConfig, edm_network
from .pretrained import save_checkpoint

__all__ = ["TrainConfig", "TrainResult", "training_step", "flow_training_step", "edm_training_step", "edm_network", "update_ema", "train", "plot_loss_curve", "main"]

DEFAULT_OUT = "digits_ddpm.safetensors"
OBJECTIVES = ("eps", "flow", "edm")


@dataclass(frozen=True)
class TrainConfig:
    """The hyperparameters of one run. The defaults are the ones the shipped weights used."""

    steps: int = 2500
    seed: int = 0
    batch_size: int = 128
    lr: float = 2e-3
    p_uncond: float = 0.15  # classifier-free guidance's label dropout
    ema_decay: float = 0.999
    schedule: str = "linear"  # DDPM's linear 1e-4..0.02
    num_timesteps: int = 1000
    unet: UNetConfig = field(default_factory=UNetConfig)
    #: "eps": DDPM's L_simple (the shipped digits_ddpm); "flow": conditional flow matching on the straight path
    #: with SD3's logit-normal t (digits_flow); "edm": EDM's preconditioning, loss weight and log-normal sigma
    #: (digits_edm). Same network, same steps, same batches.
    objective: str = "eps"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")


@dataclass
class TrainResult:
    model: DigitsUNet  # the EMA weights: what you sample from
    losses: list[float]  # the training loss of every step
    seconds: float  # wall-clock time
    cpu_seconds: float  # CPU time of this process: with one thread, what an idle core would need


def training_step(model, optimizer, x0, labels, schedule: NoiseSchedule, p_uncond: float, generator) -> float:
    r"""One gradient step of DDPM Algorithm 1 on the batch ``(x0, labels)``; returns the loss.

    Line 3: :math:`t \sim \text{Uniform}(\{1..T\})`; line 4: :math:`\epsilon \sim \mathcal N(0, I)`;
    line 5: a gradient step on :math:`\|\epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\epsilon, t, c)\|^2`
    (:func:`diffusion_notes.losses.p_losses`). With probability ``p_uncond`` the label ``c`` is the
    null label (classifier-free guidance, Ho & Salimans 2022, Algorithm 1).
    """
    batch = x0.shape[0]
    t = torch.randint(0, schedule.num_timesteps, (batch,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    drop = torch.rand(batch, generator=generator) < p_uncond
    c = torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)
    loss = p_losses(model, x0, t, schedule, noise=noise, c=c)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def flow_training_step(model, optimizer, x0, labels, p_uncond: float, generator, num_timesteps: int = 1000) -> float:
    r"""One gradient step of conditional flow matching (Lipman et al. 2023, Eq. 9) as SD3 trains (Esser et al. 2024):
    :math:`t` from the logit-normal density (m = 0, s = 1), :math:`x_t = (1-t)x_0 + t\epsilon`, and a gradient step on
    :math:`\|v_\theta(x_t, 1000\,t, c) - (\epsilon - x_0)\|^2`; the label dropout of classifier-free guidance as in
    :func:`training_step`."""
    batch = x0.shape[0]
    t = sample_logit_normal(batch, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    drop = torch.rand(batch, generator=generator) < p_uncond
    c = torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)
    loss = cfm_loss(model(flow_path(x0, noise, t), t * num_timesteps, c), x0, noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def edm_training_step(model, optimizer, x0, labels, p_uncond: float, generator, sigma_data: float) -> float:
    r"""One gradient step of EDM's training (Karras et al. 2022, Sec. 5, Table 1): :math:`\ln\sigma \sim \mathcal N(-1.2, 1.2^2)`,
    the loss :math:`\lambda(\sigma)\lVert D_\theta(x_0 + \sigma n;\sigma) - x_0\rVert^2` with :math:`D_\theta` preconditioned
    (:func:`diffusion_notes.edm.preconditioned_denoiser`), and classifier-free label dropout as :func:`training_step`."""
    batch = x0.shape[0]
    sigma = sample_training_sigmas(batch, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    drop = torch.rand(batch, generator=generator) < p_uncond
    c = torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)
    loss = edm_loss(preconditioned_denoiser(edm_network(model), sigma_data), x0, sigma, noise, c, sigma_data=sigma_data)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def update_ema(ema_model, model, decay: float, step: int) -> None:
    r"""Exponential moving average of the weights, :math:`\bar\theta \leftarrow d\bar\theta + (1-d)\theta`.

    DDPM samples from an EMA of the weights (Ho et al. 2020, App. B, decay 0.9999); it averages
    out the noise of the last steps, which matters most in a short run. The decay is warmed up as
    ``min(decay, (1 + step) / (10 + step))`` (CompVis ``LitEma``) so that early weights, far from
    the final ones, are forgotten quickly.
    """
    d = min(decay, (1 + step) / (10 + step))
    for ema_p, p in zip(ema_model.parameters(), model.parameters()):
        ema_p.lerp_(p, 1.0 - d)


def train(config: TrainConfig = TrainConfig(), log_every: int = 250, log=print) -> TrainResult:
    """Train from scratch on the training split of the digits; deterministic given ``config.seed``."""
    torch.manual_seed(config.seed)  # the weight initialisation
    generator = torch.Generator().manual_seed(config.seed)  # batches, timesteps, noise, label dropout
    images, labels = load_split("train")
    schedule = NoiseSchedule.from_name(config.schedule, config.num_timesteps)
    sigma_data = float(images.std())  # EDM's sigma_data: the training data's standard deviation
    model = DigitsUNet(config.unet)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    # Cosine decay to zero: large steps early, small ones at the end, where the EMA is read.
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)

    losses: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(config.steps):
        # Algorithm 1, line 2: x0 ~ q(x0), drawn with replacement from the training split.
        idx = torch.randint(0, images.shape[0], (config.batch_size,), generator=generator)
        if config.objective == "edm":
            losses.append(edm_training_step(model, optimizer, images[idx], labels[idx], config.p_uncond, generator,
                                            sigma_data))
        elif config.objective == "flow":
            losses.append(flow_training_step(model, optimizer, images[idx], labels[idx], config.p_uncond, generator,
                                             config.num_timesteps))
        else:
            losses.append(training_step(model, optimizer, images[idx], labels[idx], schedule, config.p_uncond, generator))
        lr_schedule.step()
        update_ema(ema_model, model, config.ema_decay, step)
        if log_every and ((step + 1) % log_every == 0 or step + 1 == config.steps):
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            recent = losses[-log_every:]
            log(
                f"step {step + 1:>5}/{config.steps}  loss {sum(recent) / len(recent):.4f}  "
                f"{elapsed:6.1f} s  ({1000 * elapsed / (step + 1):.0f} ms/step wall, "
                f"{1000 * cpu / (step + 1):.0f} ms/step CPU)"
            )
    return TrainResult(
        model=ema_model.eval(),
        losses=losses,
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start,
    )


def smoothed(losses: list[float], window: int) -> list[float]:
    """Mean of each consecutive block of ``window`` losses (one step's loss is very noisy:
    it depends mostly on which timesteps were drawn)."""
    return [sum(losses[i : i + window]) / len(losses[i : i + window]) for i in range(0, len(losses), window)]


def plot_loss_curve(losses: list[float], path, window: int = 50) -> None:
    """Save the training loss, averaged over blocks of ``window`` steps, as a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    means = smoothed(losses, window)
    ax.plot([window * (i + 0.5) for i in range(len(means))], means)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"loss (mean of {window} steps)")
    ax.set_yscale("log")
    ax.set_title("digits DDPM: L_simple (DDPM Eq. 14)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_notes train-toy",
        description="Train the class-conditional DDPM on scikit-learn's 8x8 digits (CPU, a few minutes).",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"weights file to write (default: {DEFAULT_OUT})")
    parser.add_argument("--overwrite", action="store_true", help="replace --out (and --loss-curve) if they already exist")
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"training steps (default: {defaults.steps})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"random seed (default: {defaults.seed})")
    parser.add_argument("--loss-curve", metavar="PNG", help="also save the loss curve to this PNG file")
    parser.add_argument("--objective", choices=OBJECTIVES, default=defaults.objective,
                        help="eps: DDPM's L_simple (default); flow: conditional flow matching, SD3's objective; "
                        "edm: EDM's preconditioning and loss (Karras et al. 2022)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default: 1, which makes the result independent of the core count "
        "and, on a shared machine, is often faster than oversubscribed multi-threading)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = [] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    out = Path(args.out)
    # Checked before training, so that a mistyped command costs nothing and loses nothing.
    for path in (out, args.loss_curve and Path(args.loss_curve)):
        if path and path.exists() and not args.overwrite:
            print(f"error: {path} already exists; pass --overwrite to replace it or choose another path", file=sys.stderr)
            return 1
    if args.steps < 1 or args.threads < 1:
        print(f"error: --steps and --threads must be at least 1, got {args.steps} and {args.threads}", file=sys.stderr)
        return 2
    config = TrainConfig(steps=args.steps, seed=args.seed, objective=args.objective)
    print(f"training the digits {dict(eps='DDPM', flow='flow-matching model', edm='EDM model')[config.objective]} with {args.threads} thread(s): {config}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        result = train(config)
    finally:
        torch.set_num_threads(previous_threads)
    command = shlex.join(["python", "-m", "diffusion_notes", "train-toy", *argv])
    save_checkpoint(
        result.model,
        out,
        config.schedule,
        config.num_timesteps,
        extra={
            "seed": config.seed,
            "steps": config.steps,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "p_uncond": config.p_uncond,
            "ema_decay": config.ema_decay,
            "threads": args.threads,
            "final_loss_mean_last_250": f"{sum(result.losses[-250:]) / len(result.losses[-250:]):.5f}",
            "train_seconds": f"{result.seconds:.1f}",
            "train_cpu_seconds": f"{result.cpu_seconds:.1f}",
            "torch_version": torch.__version__,
            "command": command,
            "objective": config.objective,
            **({"parameterization": "flow"} if config.objective == "flow" else {}),
            **({"parameterization": "edm", "sigma_data": f"{float(load_split('train')[0].std()):.6f}"}
               if config.objective == "edm" else {}),
        },
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) after {result.seconds:.1f} s ({result.cpu_seconds:.1f} s CPU)")
    if args.loss_curve:
        plot_loss_curve(result.losses, args.loss_curve)
        print(f"wrote {args.loss_curve}")
    return 0

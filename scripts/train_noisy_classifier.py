"""Train the noise-conditional digit classifier p(y | x_t, t) used for classifier guidance in notebook 18.

    python scripts/train_noisy_classifier.py --out diffusion_notes/toy/weights/noisy_classifier.safetensors

Cross-entropy on noisy training digits x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, t uniform in 0..T-1, with the
shipped digits DDPM's schedule (Dhariwal & Nichol 2021, Sec. 4.1: "train a classifier on noisy images").
AdamW, cosine learning rate, a fixed number of steps and seed, one torch thread: the same command gives
the same weights on the same software stack. Prints test accuracy by noise level at the end.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from diffusion_notes.forward import q_sample
from diffusion_notes.toy import load_pretrained, load_split
from diffusion_notes.toy.noisy_classifier import NoisyDigitClassifier, save_classifier


def accuracy_by_level(model, schedule, levels=(0, 100, 250, 500, 750, 999), seed=1) -> dict[int, float]:
    images, labels = load_split("test")
    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for t in levels:
            tt = torch.full((len(labels),), t)
            x_t = q_sample(images, tt, torch.randn(images.shape, generator=g), schedule)
            out[t] = float((model(x_t, tt.float()).argmax(1) == labels).float().mean())
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the .safetensors file to write (never overwritten)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        print(f"error: {out} exists; choose another --out or delete it first", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    _, schedule = load_pretrained()
    images, labels = load_split("train")
    model = NoisyDigitClassifier(args.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    g = torch.Generator().manual_seed(args.seed)
    start, cpu_start = time.time(), time.process_time()
    for step in range(args.steps):
        idx = torch.randint(0, len(labels), (args.batch_size,), generator=g)
        t = torch.randint(0, schedule.num_timesteps, (args.batch_size,), generator=g)
        x_t = q_sample(images[idx], t, torch.randn(images[idx].shape, generator=g), schedule)
        loss = F.cross_entropy(model(x_t, t.float()), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        if step % 500 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}", flush=True)
    wall, cpu = time.time() - start, time.process_time() - cpu_start
    acc = accuracy_by_level(model.eval(), schedule)
    print("test accuracy by timestep:", {t: round(a, 3) for t, a in acc.items()})
    command = "python scripts/train_noisy_classifier.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    save_classifier(model, out, {"command": command, "steps": args.steps, "seed": args.seed, "lr": args.lr,
                                 "batch_size": args.batch_size, "final_loss": f"{loss.item():.4f}",
                                 "wall_seconds": f"{wall:.1f}", "cpu_seconds": f"{cpu:.1f}",
                                 "test_accuracy_by_timestep": acc, "torch": torch.__version__})
    print(f"wrote {out} ({wall:.1f} s wall, {cpu:.1f} s CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

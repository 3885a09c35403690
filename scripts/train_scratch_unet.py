r"""Train the UNet that notebook 23 writes from scratch, and save it where the notebook reads it.

The network's definition is the notebook's own: this script executes the code cells tagged ``scratch-unet`` in
``notebooks/23_denoiser_from_scratch.ipynb`` (and nothing else), then trains the result exactly as the shipped digits DDPM
was trained (``diffusion_notes.toy.train``: DDPM Algorithm 1 with classifier-free label dropout, AdamW with cosine decay,
EMA of the weights), one thread, fixed seed.

    python scripts/train_scratch_unet.py                       # -> notebooks/data/scratch_unet.safetensors
    python scripts/train_scratch_unet.py --out other.safetensors --steps 500
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "23_denoiser_from_scratch.ipynb"
TAG = "scratch-unet"


def scratch_namespace(notebook: Path = NOTEBOOK) -> dict:
    """The names the notebook's ``scratch-unet`` cells define (``ScratchUNet`` and its pieces)."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    source = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code" and TAG in c.get("metadata", {}).get("tags", []))
    if "class ScratchUNet" not in source:
        raise SystemExit(f"error: no code cell tagged {TAG!r} defines ScratchUNet in {notebook}")
    namespace = {}
    exec(compile("import math\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn\n\n" + source, str(notebook), "exec"), namespace)
    return namespace


def main(argv: list[str] | None = None) -> int:
    from safetensors.torch import save_file

    from diffusion_notes.schedules import NoiseSchedule
    from diffusion_notes.toy.digits import load_split
    from diffusion_notes.toy.train import TrainConfig, training_step, update_ema

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "notebooks" / "data" / "scratch_unet.safetensors"))
    parser.add_argument("--steps", type=int, default=TrainConfig().steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"error: {out} already exists; pass --overwrite to replace it or choose another --out", file=sys.stderr)
        return 1
    if args.steps < 1:
        print(f"error: --steps must be at least 1, got {args.steps}", file=sys.stderr)
        return 2

    torch.set_num_threads(1)
    config = TrainConfig(steps=args.steps, seed=args.seed)
    torch.manual_seed(config.seed)
    model = scratch_namespace()["ScratchUNet"]()
    generator = torch.Generator().manual_seed(config.seed)
    images, labels = load_split("train")
    schedule = NoiseSchedule.from_name(config.schedule, config.num_timesteps)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    losses, start = [], time.process_time()
    for step in range(config.steps):
        idx = torch.randint(0, images.shape[0], (config.batch_size,), generator=generator)
        losses.append(training_step(model, optimizer, images[idx], labels[idx], schedule, config.p_uncond, generator))
        lr_schedule.step()
        update_ema(ema, model, config.ema_decay, step)
        if (step + 1) % 250 == 0:
            print(f"step {step + 1}/{config.steps}  loss {sum(losses[-250:]) / 250:.4f}  {time.process_time() - start:.0f} s CPU", flush=True)
    cpu = time.process_time() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    command = shlex.join(["python", "scripts/train_scratch_unet.py", *(argv if argv is not None else sys.argv[1:])])
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp),
              metadata={"command": command, "steps": str(config.steps), "seed": str(config.seed), "train_cpu_seconds": f"{cpu:.1f}",
                        "final_loss_mean_last_250": f"{sum(losses[-250:]) / len(losses[-250:]):.5f}", "torch_version": torch.__version__})
    tmp.replace(out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) after {cpu:.0f} s of CPU time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

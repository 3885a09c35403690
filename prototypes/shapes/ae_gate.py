"""Prototype (throwaway): the first-stage gate of issue 20.

Trains an ``AutoencoderKL`` from diffusion_notes.models on fresh renders of the training pairs (infinite
data) and, every ``--eval-every`` steps, judges its reconstructions (posterior mode) of 500 fixed renders
of the five HELD-OUT pairs (and 500 of the seen pairs) with diffusion_notes.mini_sd_shapes.judge.
Prints CPU seconds of training (time.process_time, one thread, evaluation excluded) next to accuracy.

    python prototypes/shapes/ae_gate.py --f 2 --z 4 --loss mse --kl 0 --steps 2000
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

from diffusion_notes.mini_sd_shapes import judge, world
from diffusion_notes.models.config import AutoencoderConfig
from diffusion_notes.models.vae import AutoencoderKL

p = argparse.ArgumentParser()
p.add_argument("--f", type=int, default=4)
p.add_argument("--z", type=int, default=4)
p.add_argument("--ch", type=int, default=32)
p.add_argument("--res", type=int, default=1)
p.add_argument("--loss", default="mse", choices=["mse", "l1"])
p.add_argument("--kl", type=float, default=0.0, help="0: deterministic (decode the mean); >0: sample q(z|x), add kl*KL")
p.add_argument("--steps", type=int, default=1000)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--eval-every", type=int, default=250)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--save", default=None)
args = p.parse_args()
torch.set_num_threads(1)
torch.manual_seed(args.seed)
gen = torch.Generator().manual_seed(args.seed)

mult = {1: (1,), 2: (1, 2), 4: (1, 2, 2), 8: (1, 1, 2, 2)}[args.f]
vae = AutoencoderKL(AutoencoderConfig(ch=args.ch, ch_mult=mult, num_res_blocks=args.res, z_channels=args.z,
                                      embed_dim=args.z))
nparams = sum(p.numel() for p in vae.parameters())
opt = torch.optim.AdamW(vae.parameters(), lr=args.lr)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)

eval_gen = torch.Generator().manual_seed(12345)
held = world.sample_scenes(500, eval_gen, split="held_out")
seen = world.sample_scenes(500, eval_gen, split="train")
held_x, seen_x = world.render(held), world.render(seen)
print(json.dumps({"config": vars(args), "params": nparams, "judge_on_real_held": judge.accuracy(held_x, held)}), flush=True)


@torch.no_grad()
def evaluate(step, cpu):
    vae.eval()
    rh = vae.decode(vae.encode(held_x).mode())
    rs = vae.decode(vae.encode(seen_x).mode())
    post = vae.encode(held_x[:100])
    vae.train()
    row = {"step": step, "cpu_s": round(cpu, 1), "mse": round(F.mse_loss(rh, held_x).item(), 5),
           "held": judge.accuracy(rh, held), "seen": judge.accuracy(rs, seen),
           "post_std": round(post.std.mean().item(), 4), "z_std": round(post.mean.std().item(), 3)}
    print(json.dumps(row), flush=True)
    return row


cpu = 0.0
losses = []
for step in range(1, args.steps + 1):
    t = time.process_time()
    x = world.render(world.sample_scenes(args.batch, gen, split="train"))
    post = vae.encode(x)
    z = post.mode() if args.kl == 0 else post.sample(gen)
    rec = vae.decode(z)
    loss = F.mse_loss(rec, x) if args.loss == "mse" else (rec - x).abs().mean()
    if args.kl > 0:
        loss = loss + args.kl * post.kl().mean() / x[0].numel()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    cpu += time.process_time() - t
    losses.append(loss.item())
    if step % 50 == 0:
        print(f"step {step} loss {sum(losses[-50:]) / 50:.5f} cpu {cpu:.1f}", flush=True)
    if step % args.eval_every == 0 or step == args.steps:
        evaluate(step, cpu)
        if args.save:
            torch.save(vae.state_dict(), args.save.replace(".pt", f"_s{step}.pt"))
if args.save:
    torch.save(vae.state_dict(), args.save)

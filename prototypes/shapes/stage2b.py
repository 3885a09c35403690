"""Prototype (throwaway): the UNet + text stage of issue 20, with the knobs of the position study.

stage2.py's recipe (digits miniature: word tokenizer, CLIP text encoder trained jointly with the UNet on LDM
Eq. 2, 10% empty captions, EMA 0.995, AdamW + cosine) plus:

* ``--pos-always N``: for the first N steps the captions always name the position (p_omit 0 for it),
  afterwards the world's default omission probabilities;
* ``--t-high F``: a fraction F of each batch draws t from the upper half [T/2, T) (where the position of a
  sample is decided), the rest uniformly; F = 0 is LDM's uniform t;
* ``--v``, ``--zsnr``: v-prediction and SD's schedule rescaled to zero terminal SNR (Lin et al. 2024);
* ``--bf16``: bf16 autocast for the training step (timing only; budgets are fp32);
* a diagnostic every ``--diag-every`` steps: on 256 fixed seen-pair latents with fixed noise at
  t in {999, 900, 750, 500}, the EMA model's loss with the full caption, with the position word left out and
  with a wrong position: if full < omitted, the position words reach the denoiser at that t;
* at the end (EMA weights): position read by the judge on 100 images of full captions and 100 of
  position-only captions ("a shape on the left"), guidance 7.5; ``--gate`` adds stage2.py's generation gate
  (100 seen + 100 held-out full captions at guidance 7.5 and 1, saved as gen_*.npz for rejudge_gen.py).

    python prototypes/shapes/stage2b.py --vae /tmp/shapes/ae_f4z8.pt --f 4 --z 8 --steps 300
"""
import argparse
import copy
import json
import tempfile
import time

import numpy as np
import torch
from torch import nn

from diffusion_notes.mini_sd_shapes import judge, world
from diffusion_notes.models.config import AutoencoderConfig, UNetConfig
from diffusion_notes.models.vae import AutoencoderKL
from diffusion_notes.toy.train import update_ema
from diffusion_notes.training import assemble_stable_diffusion, build_text_encoder, build_word_tokenizer, latent_diffusion_loss

p = argparse.ArgumentParser()
p.add_argument("--vae", required=True)
p.add_argument("--f", type=int, default=4)
p.add_argument("--z", type=int, default=4)
p.add_argument("--steps", type=int, default=300)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--pool", type=int, default=8000)
p.add_argument("--mc", type=int, default=64, help="UNet model_channels")
p.add_argument("--text-width", type=int, default=64)
p.add_argument("--pos-always", type=int, default=0)
p.add_argument("--t-high", type=float, default=0.0)
p.add_argument("--bf16", action="store_true")
p.add_argument("--v", action="store_true", help="v-prediction (Salimans & Ho 2022) instead of eps")
p.add_argument("--zsnr", action="store_true", help="SD's schedule rescaled to zero terminal SNR (Lin et al. 2024, Alg. 1)")
p.add_argument("--diag-every", type=int, default=100)
p.add_argument("--gate", action="store_true")
p.add_argument("--eval-n", type=int, default=100)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--tag", default="run")
p.add_argument("--out", default="prototypes/shapes/logs")
p.add_argument("--save", default=None)
args = p.parse_args()
torch.set_num_threads(1)
torch.manual_seed(args.seed)
gen = torch.Generator().manual_seed(args.seed)

mult = {2: (1, 2), 4: (1, 2, 2), 8: (1, 1, 2, 2)}[args.f]
vae = AutoencoderKL(AutoencoderConfig(ch=32, ch_mult=mult, num_res_blocks=1, z_channels=args.z, embed_dim=args.z))
vae.load_state_dict(torch.load(args.vae))
with torch.no_grad():  # deterministic first stage in AutoencoderKL's format: log-variance -30 (std 3e-7)
    vae.quant_conv.weight[args.z:] = 0
    vae.quant_conv.bias[args.z:] = -30.0
vae = vae.eval().requires_grad_(False)


def subset(s, idx):
    return world.Scenes(**{k: getattr(s, k)[idx] for k in s.__dataclass_fields__})


def encode(s):
    with torch.no_grad():
        return torch.cat([vae.encode(world.render(subset(s, slice(i, i + 256)))).mode() for i in range(0, len(s), 256)])


t0 = time.process_time()
scenes = world.sample_scenes(args.pool, gen, split="train")
latents = encode(scenes)
scale = float(1 / latents.std())
pool_cpu = time.process_time() - t0
print(json.dumps({"config": vars(args), "pool_cpu_s": round(pool_cpu, 1), "scale_factor": scale,
                  "latent_shape": list(latents.shape[1:])}), flush=True)

tokdir = tempfile.mkdtemp()
tokenizer = build_word_tokenizer(world.WORDS, tokdir)
text = build_text_encoder(tokenizer, args.text_width, 3, 4)
unet_cfg = UNetConfig(in_channels=args.z, out_channels=args.z, model_channels=args.mc, channel_mult=(1, 2),
                      num_res_blocks=1, transformer_depth=(1, 1), transformer_depth_middle=1,
                      context_dim=args.text_width, num_heads=4)
from diffusion_notes.schedules import NoiseSchedule

sd = assemble_stable_diffusion(unet_cfg, vae, text, tokenizer, scale, native_size=(32, 32),
                               prediction_type="v" if args.v else "eps",
                               schedule=NoiseSchedule.stable_diffusion(zero_terminal_snr=args.zsnr))
trained = nn.ModuleList([sd.unet, sd.prompt_encoder.text_encoders[0]]).train().requires_grad_(True)
print("unet params", sum(p.numel() for p in sd.unet.parameters()), flush=True)
ema = copy.deepcopy(trained).requires_grad_(False)
opt = torch.optim.AdamW(trained.parameters(), lr=args.lr)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
T = sd.schedule.num_timesteps

# the diagnostic's fixed batch: 256 seen-pair scenes, captions naming all four attributes
dg = torch.Generator().manual_seed(4242)
d_scenes = world.sample_scenes(256, dg, split="train")
d_lat = scale * encode(d_scenes)
d_noise = torch.randn(d_lat.shape, generator=dg)
attrs = lambda i: [int(v[i]) for v in (d_scenes.colour, d_scenes.shape, d_scenes.position, d_scenes.size)]
cap_full = [world.caption(*attrs(i), template=i) for i in range(256)]
cap_nopos = [world.caption(*attrs(i)[:2], None, attrs(i)[3], template=i) for i in range(256)]
cap_wrong = [world.caption(*attrs(i)[:2], (attrs(i)[2] + 1 + i % 4) % 5, attrs(i)[3], template=i) for i in range(256)]


@torch.no_grad()
def diagnostic(step):
    live = [p.detach().clone() for p in trained.parameters()]
    for a, b in zip(trained.parameters(), ema.parameters()):
        a.copy_(b)
    trained.eval()
    row = {"step": step}
    for tv in (999, 900, 750, 500):
        t = torch.full((256,), tv)
        losses = [float(np.mean([latent_diffusion_loss(sd, d_lat[i:i + 64], caps[i:i + 64], t=t[i:i + 64],
                                                       noise=d_noise[i:i + 64]).item() for i in range(0, 256, 64)]))
                  for caps in (cap_full, cap_nopos, cap_wrong)]
        row[f"t{tv}"] = {"full": round(losses[0], 4), "no_pos": round(losses[1], 4), "wrong_pos": round(losses[2], 4)}
    for a, b in zip(trained.parameters(), live):
        a.copy_(b)
    trained.train()
    print(json.dumps(row), flush=True)


cpu, losses = 0.0, []
for step in range(args.steps):
    t_cpu = time.process_time()
    idx = torch.randint(0, args.pool, (args.batch,), generator=gen)
    sub = subset(scenes, idx)
    p_omit = (0.15, 0.15, 0.0 if step < args.pos_always else 0.25, 0.25)
    captions = world.sample_captions(sub, gen, p_omit=p_omit)
    t = torch.randint(0, T, (args.batch,), generator=gen)
    n_high = int(round(args.t_high * args.batch))
    if n_high:
        t[:n_high] = torch.randint(T // 2, T, (n_high,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        loss = latent_diffusion_loss(sd, scale * latents[idx], captions, gen, t=t)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    update_ema(ema, trained, 0.995, step)
    cpu += time.process_time() - t_cpu
    losses.append(loss.item())
    if (step + 1) % 50 == 0:
        print(f"step {step + 1} loss {sum(losses[-50:]) / 50:.4f} cpu {cpu:.1f}", flush=True)
    if args.diag_every and (step + 1) % args.diag_every == 0:
        diagnostic(step + 1)
with torch.no_grad():
    for a, b in zip(trained.parameters(), ema.parameters()):
        a.copy_(b)
trained.eval().requires_grad_(False)
print(json.dumps({"train_cpu_s": round(cpu, 1), "s_per_step": round(cpu / args.steps, 3)}), flush=True)
if args.save:
    torch.save({"unet": sd.unet.state_dict(), "text": sd.prompt_encoder.text_encoders[0].state_dict(),
                "scale": scale}, args.save)


def generate(prompts, target, g, path=None):
    t_cpu = time.process_time()
    out = sd.txt2img(prompts, steps=20, sampler="dpmpp_2m", guidance_scale=g, seed=1, output="array", progress=False)
    acc = judge.accuracy(out.arrays, target)
    if path:
        np.savez_compressed(path, arrays=(np.asarray(out.arrays) * 255).round().astype(np.uint8),
                            **{k: getattr(target, k).numpy() for k in judge.ATTRIBUTES}, prompts=np.array(prompts))
    return acc, round(time.process_time() - t_cpu, 1)


eval_gen = torch.Generator().manual_seed(777)
n = args.eval_n
seen = world.sample_scenes(n, eval_gen, split="train")
held = world.sample_scenes(n, eval_gen, split="held_out")
full = lambda s: [world.caption(int(s.colour[i]), int(s.shape[i]), int(s.position[i]), int(s.size[i]), template=i)
                  for i in range(n)]
pos_only = [world.caption(None, None, int(seen.position[i]), None, template=i) for i in range(n)]
acc, c = generate(pos_only, seen, 7.5)
print(json.dumps({"eval": "position-only captions", "guidance": 7.5, "position": acc["position"], "cpu_s": c}), flush=True)
if not args.gate:
    acc, c = generate(full(seen), seen, 7.5)
    print(json.dumps({"eval": "full captions, seen", "guidance": 7.5, **acc, "cpu_s": c}), flush=True)
else:
    import os
    os.makedirs(f"{args.out}/gen_{args.tag}", exist_ok=True)
    for name, s in (("seen", seen), ("held_out", held)):
        for g in (7.5, 1.0):
            acc, c = generate(full(s), s, g, path=f"{args.out}/gen_{args.tag}/gen_{name}_g{g}.npz")
            print(json.dumps({"eval": f"gate, {name}", "guidance": g, **acc, "cpu_s": c}), flush=True)

"""Prototype (throwaway): the UNet + text stage of issue 20 on a frozen first stage from ae_gate.py.

The digits miniature's recipe (diffusion_notes/mini_sd/train.py: word tokenizer, CLIP text encoder trained
jointly with a zero-initialised UNet on LDM Eq. 2, 10% empty captions, EMA), with the shapes world's captions
(merge-safe word order) and a pool of renders of the TRAINING pairs encoded once. Then the generation gate:
100 full captions of seen pairs and 100 of held-out pairs, judged, at guidance 7.5 and 1.

    python prototypes/shapes/stage2.py --vae /tmp/shapes_ae_f4z4.pt --f 4 --z 4 --steps 600
"""
import argparse
import copy
import json
import tempfile
import time

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
p.add_argument("--ch", type=int, default=32)
p.add_argument("--steps", type=int, default=600)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--pool", type=int, default=8000)
p.add_argument("--mc", type=int, default=64, help="UNet model_channels")
p.add_argument("--eval-n", type=int, default=100)
p.add_argument("--eval-steps", type=int, default=20)
p.add_argument("--sampler", default="dpmpp_2m")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", default="prototypes/shapes/logs")
args = p.parse_args()
torch.set_num_threads(1)
torch.manual_seed(args.seed)
gen = torch.Generator().manual_seed(args.seed)

mult = {2: (1, 2), 4: (1, 2, 2), 8: (1, 1, 2, 2)}[args.f]
vae = AutoencoderKL(AutoencoderConfig(ch=args.ch, ch_mult=mult, num_res_blocks=1, z_channels=args.z, embed_dim=args.z))
vae.load_state_dict(torch.load(args.vae))
with torch.no_grad():  # deterministic first stage in AutoencoderKL's format: log-variance -30 (std 3e-7)
    vae.quant_conv.weight[args.z:] = 0
    vae.quant_conv.bias[args.z:] = -30.0
vae = vae.eval().requires_grad_(False)

t0 = time.process_time()
scenes = world.sample_scenes(args.pool, gen, split="train")
with torch.no_grad():
    latents = torch.cat([vae.encode(world.render(world.Scenes(**{k: getattr(scenes, k)[i:i + 256] for k in scenes.__dataclass_fields__}))).mode()
                         for i in range(0, args.pool, 256)])
scale = float(1 / latents.std())
pool_cpu = time.process_time() - t0
print(json.dumps({"config": vars(args), "pool_cpu_s": round(pool_cpu, 1), "scale_factor": scale,
                  "latent_shape": list(latents.shape[1:])}), flush=True)

tokdir = tempfile.mkdtemp()
tokenizer = build_word_tokenizer(world.WORDS, tokdir)
text = build_text_encoder(tokenizer, 64, 3, 4)
unet_cfg = UNetConfig(in_channels=args.z, out_channels=args.z, model_channels=args.mc, channel_mult=(1, 2),
                      num_res_blocks=1, transformer_depth=(1, 1), transformer_depth_middle=1, context_dim=64, num_heads=4)
sd = assemble_stable_diffusion(unet_cfg, vae, text, tokenizer, scale, native_size=(32, 32))
trained = nn.ModuleList([sd.unet, sd.prompt_encoder.text_encoders[0]]).train().requires_grad_(True)
print("unet params", sum(p.numel() for p in sd.unet.parameters()), flush=True)
ema = copy.deepcopy(trained).requires_grad_(False)
opt = torch.optim.AdamW(trained.parameters(), lr=args.lr)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
cpu, losses = 0.0, []
for step in range(args.steps):
    t = time.process_time()
    idx = torch.randint(0, args.pool, (args.batch,), generator=gen)
    sub = world.Scenes(**{k: getattr(scenes, k)[idx] for k in scenes.__dataclass_fields__})
    captions = world.sample_captions(sub, gen)
    loss = latent_diffusion_loss(sd, scale * latents[idx], captions, gen)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    update_ema(ema, trained, 0.995, step)
    cpu += time.process_time() - t
    losses.append(loss.item())
    if (step + 1) % 50 == 0:
        print(f"step {step + 1} loss {sum(losses[-50:]) / 50:.4f} cpu {cpu:.1f}", flush=True)
with torch.no_grad():
    for a, b in zip(trained.parameters(), ema.parameters()):
        a.copy_(b)
trained.eval().requires_grad_(False)
print(json.dumps({"train_cpu_s": round(cpu, 1), "s_per_step": round(cpu / args.steps, 3)}), flush=True)

eval_gen = torch.Generator().manual_seed(777)
for split in ("train", "held_out"):
    target = world.sample_scenes(args.eval_n, eval_gen, split=split)
    prompts = [world.caption(int(target.colour[i]), int(target.shape[i]), int(target.position[i]), int(target.size[i]),
                             template=i) for i in range(args.eval_n)]
    for g in (7.5, 1.0):
        t = time.process_time()
        out = sd.txt2img(prompts, steps=args.eval_steps, sampler=args.sampler, guidance_scale=g, seed=1,
                         output="array", progress=False)
        acc = judge.accuracy(out.arrays, target)
        print(json.dumps({"set": "seen" if split == "train" else "held_out", "guidance": g,
                          "sampler": args.sampler, "steps": args.eval_steps, **acc,
                          "cpu_s": round(time.process_time() - t, 1)}), flush=True)
        import numpy as np  # every image and its target, so a later judge can re-read them (rejudge.py)
        name = "seen" if split == "train" else "held_out"
        np.savez_compressed(f"{args.out}/gen_{name}_g{g}.npz", arrays=(np.asarray(out.arrays) * 255).round().astype(np.uint8),
                            **{k: getattr(target, k).numpy() for k in judge.ATTRIBUTES}, prompts=np.array(prompts))

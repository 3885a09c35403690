"""Write notebooks/13_training_latent_diffusion.ipynb (unexecuted); run scripts/run_notebooks.sh on it after."""
import json
from pathlib import Path

cells = []
md = lambda s: cells.append({"cell_type": "markdown", "metadata": {}, "source": s.strip("\n")})
code = lambda s: cells.append({"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": s.strip("\n")})

md(r"""
# 11. Training a latent diffusion model

Notebook 12 ran Stable Diffusion's data flow; this one builds the model that the data flow runs on, from nothing.
It follows the recipe of the miniature shipped with the package (`diffusion_notes/mini_sd/MODEL_CARD.md`,
retrained by `python -m diffusion_notes train-mini-sd`), at a reduced size so that every step trains in seconds:

1. the data: scikit-learn's digits, upsampled, with captions generated from their labels;
2. the **autoencoder** $\mathcal E, \mathcal D$ and its latent **scale factor** (where SD's 0.18215 came from);
3. a **tokenizer** and a **text encoder** $\tau_\theta$ in CLIP's format;
4. the **UNet**, trained jointly with $\tau_\theta$ on LDM Eq. 2, with **caption dropout** so that one network
   also learns the unconditional model that classifier-free guidance needs;
5. samples improving with training, judged by a classifier that has never seen a generated image: the first
   200 steps here, the whole run (a few CPU minutes) by `scripts/train_notebook_11.py`, whose log the notebook
   reads.

The parts are the package's own classes (`AutoencoderKL`, `UNetModel`) and transformers' `CLIPTextModel`,
assembled into a `StableDiffusion`, the same object `from_single_file` returns for SD 1.5.
""")
code(r"""
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from diffusion_notes.display import show_source
from diffusion_notes.mini_sd import judge
from diffusion_notes.mini_sd.data import TEMPLATES, WORDS, caption, load_images
from diffusion_notes.toy.train import update_ema
from diffusion_notes.models.config import AutoencoderConfig, UNetConfig
from diffusion_notes.models.vae import AutoencoderKL, DiagonalGaussianDistribution
from diffusion_notes.training import (assemble_stable_diffusion, build_text_encoder, build_word_tokenizer,
                                      latent_diffusion_loss, measure_scale_factor, vae_loss)

torch.set_num_threads(1)  # small convolutions: one thread is fastest on a shared 2-core machine
plt.rcParams.update({"figure.dpi": 60, "image.interpolation": "nearest"})
notebook_start = time.process_time()
""")
md(r"""
## 11.1 Data and captions

The shipped model upsamples the 8x8 digits bilinearly to 32x32; to train in seconds, this notebook keeps them at
8x8. Either way they are repeated over three channels, because SD's autoencoder reads RGB. The shipped model
captions each image in one of eight phrasings, drawn anew every time it is used; this reduced recipe keeps one,
"a handwritten seven", so that a short run has only ten captions to tell apart. With probability
$p_\text{uncond} = 0.1$ the caption is the empty string (Ho & Salimans 2022, Algorithm 1: the same network then
learns $\epsilon_\theta(z_t, t, \varnothing)$).
""")
code(r"""
SIZE = 8  # the shipped model: 32
images, labels = load_images("train", size=SIZE)
print("images", tuple(images.shape), "in", (images.min().item(), images.max().item()), " labels", tuple(labels.shape))
print("the shipped model's phrasings:", [t.format(name="seven", digit=7) for t in TEMPLATES])
TEMPLATES_USED = (0,)  # the reduced recipe: "a handwritten {name}" only

def captions_for(labels, generator, p_uncond=0.1):  # a caption per label; "" with probability p_uncond
    phrasing = torch.randint(0, len(TEMPLATES_USED), (len(labels),), generator=generator)
    dropped = torch.rand(len(labels), generator=generator) < p_uncond
    return ["" if drop else caption(int(label), TEMPLATES_USED[int(k)]) for label, k, drop in zip(labels, phrasing, dropped)]

g = torch.Generator().manual_seed(0)
fig, axes = plt.subplots(1, 8, figsize=(11, 1.9))
for ax, i, text in zip(axes, range(8), captions_for(labels[:8], g)):
    ax.imshow((images[i].permute(1, 2, 0) + 1) / 2)
    ax.set_title(repr(text), fontsize=8)
    ax.axis("off")
""")
md(r"""
## 11.2 The autoencoder and its scale factor

LDM's first stage (Rombach et al. 2022, Sec. 3.1) is a KL-regularised autoencoder. SD trains it with a
reconstruction term, a perceptual and an adversarial term, and a slight KL penalty towards $\mathcal N(0, I)$;
the miniature keeps reconstruction and KL:

$$\mathcal L_\text{AE} = \frac1B\sum_b \Big(\big\|x_b - \mathcal D(z_b)\big\|_1 + w_\text{KL}\,\mathrm{KL}\big(q(z|x_b)\,\|\,\mathcal N(0, I)\big)\Big), \qquad z_b \sim q(z|x_b) = \mathcal N(\mu_b, \sigma_b^2), \quad w_\text{KL} = 10^{-6}$$
""")
code(r"""
show_source(vae_loss, docstring=False)
""")
code(r"""
torch.manual_seed(0)
vae = AutoencoderKL(AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1))   # f = 2: 8x8 -> 4x4x4
optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3)
g = torch.Generator().manual_seed(0)
ae_losses, start = [], time.process_time()
for step in range(150):
    idx = torch.randint(0, len(images), (32,), generator=g)
    loss, rec, kl = vae_loss(vae, images[idx], kl_weight=1e-6, generator=g)
    optimizer.zero_grad(); loss.backward(); optimizer.step()
    ae_losses.append(rec.item() / images[0].numel())
vae.eval().requires_grad_(False)
print(f"{sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M parameters, 150 steps in {time.process_time() - start:.0f} s CPU;"
      f" mean |x - D(E(x))| per pixel: {np.mean(ae_losses[:10]):.3f} -> {np.mean(ae_losses[-10:]):.3f}")

test_images, test_labels = load_images("test", size=SIZE)
with torch.no_grad():
    reconstructed = vae.decode(vae.encode(test_images[:8]).mode())
fig, axes = plt.subplots(2, 8, figsize=(9, 2.4))
for i in range(8):
    for row, picture in enumerate((test_images[i], reconstructed[i])):
        axes[row, i].imshow(((picture.permute(1, 2, 0) + 1) / 2).clamp(0, 1))
        axes[row, i].axis("off")
axes[0, 0].set_title("test digits", fontsize=8, loc="left"); axes[1, 0].set_title("reconstructed", fontsize=8, loc="left");
""")
md(r"""
With $w_\text{KL} = 10^{-6}$ the KL term barely constrains the latents' scale: it is whatever the encoder found
convenient. The diffusion model, whose prior at $t = T$ is $\mathcal N(0, I)$, should see unit-variance inputs, so
LDM rescales: $z_0 = s\,z$ with $s = 1/\operatorname{std}(z)$ measured on the data (CompVis `scale_by_std`).
SD 1.x's $s = 0.18215$ is this measurement on its own autoencoder.
""")
code(r"""
show_source(measure_scale_factor, docstring=False)
scale_factor = measure_scale_factor(vae, images, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    moments = vae.quant_conv(vae.encoder(images))           # (N, 8, 4, 4): mean and log-variance of q(z|x)
z = DiagonalGaussianDistribution(moments).sample(torch.Generator().manual_seed(1))
print(f"std(z) = {z.std():.3f}  ->  scale factor s = {scale_factor:.4f};  std(s z) = {(scale_factor * z).std():.3f}")
""")
md(r"""
## 11.3 Tokenizer and text encoder

CLIP's tokenizer is byte-pair encoding: a word is split into characters (the last marked `</w>`), and the ranked
merges of `merges.txt` are applied until none applies. For a closed vocabulary the merges can be *written*
instead of learned: one chain per word (`s e`, `se v`, `sev e`, `seve n</w>`) makes each caption word one
token, while single characters stay in the vocabulary for anything else. The folder is in the standard format,
loaded by transformers' `CLIPTokenizer`. The text encoder is a 3-layer `CLIPTextModel` over 77 positions, as SD's.
""")
code(r"""
import copy
import tempfile

tokenizer_dir = Path(tempfile.mkdtemp()) / "tokenizer"
tokenizer = build_word_tokenizer(WORDS, tokenizer_dir)
print("files:", sorted(p.name for p in tokenizer_dir.iterdir()))
print("merges.txt starts:", (tokenizer_dir / "merges.txt").read_text().splitlines()[:5])
print(len(tokenizer), "tokens;", tokenizer.tokenize("a handwritten seven"), tokenizer.tokenize("the digit 7"),
      tokenizer.tokenize("xyz"))
text_encoder = build_text_encoder(tokenizer, hidden_size=64, num_layers=3, num_heads=4)
print(f"text encoder: {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.3f}M parameters, "
      f"{text_encoder.config.max_position_embeddings} positions, {text_encoder.config.num_attention_heads} heads")
""")
md(r"""
## 11.4 LDM Eq. 2 and the training step

$$L_\text{LDM} = \mathbb{E}_{\mathcal E(x),\,y,\,\epsilon \sim \mathcal N(0, 1),\,t}\Big[\big\|\epsilon - \epsilon_\theta\big(z_t, t, \tau_\theta(y)\big)\big\|_2^2\Big], \qquad z_t = \sqrt{\bar\alpha_t}\,z_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$$

Eq. 2 of Rombach et al. (2022) is DDPM's $L_\text{simple}$ on latents $z_0 = s\,\mathcal E(x)$; with the
conditioning $\tau_\theta(y)$ it is their Eq. 3, where $\tau_\theta$ and $\epsilon_\theta$ are optimised
**jointly**. The function is the package's `q_sample` (DDPM Eq. 4) and `p_losses` (DDPM Eq. 14) behind the
text encoder's trainable path (`PromptEncoder.encode`; `PromptEncoder.forward`, used at inference, runs without
gradients):
""")
code(r"""
show_source(latent_diffusion_loss, docstring=False)
""")
code(r"""
# the recipe of scripts/train_notebook_11.py (checked against its log below)
RECIPE = {"size": SIZE, "vae_steps": 150, "model_channels": 64, "transformer_depth": [1, 1], "text_layers": 3,
          "templates": list(TEMPLATES_USED), "p_uncond": 0.1, "batch": 64, "lr": 1e-3, "ema_decay": 0.995, "steps": 800}
unet_config = UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 1),
                         context_dim=64, num_heads=4)   # cross-attention at both resolutions and in the middle
sd = assemble_stable_diffusion(unet_config, vae, text_encoder, tokenizer, scale_factor, native_size=(SIZE, SIZE))
print(f"UNet: {sum(p.numel() for p in sd.unet.parameters()) / 1e6:.2f}M parameters; latents {tuple(moments.shape[1:])} "
      f"-> {4}x{SIZE // 2}x{SIZE // 2}; schedule: SD's scaled_linear, T = {sd.schedule.num_timesteps}")

trained = torch.nn.ModuleList([sd.unet, text_encoder]).train().requires_grad_(True)
ema = copy.deepcopy(trained).requires_grad_(False)            # the weights that are sampled (CompVis LitEma)
optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-3)
schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=800)   # the whole run's length
g = torch.Generator().manual_seed(0)
losses = []

def train_steps(n, batch=64):
    for _ in range(n):
        idx = torch.randint(0, len(moments), (batch,), generator=g)
        z0 = scale_factor * DiagonalGaussianDistribution(moments[idx]).sample(g)   # z ~ q(z|x), scaled
        loss = latent_diffusion_loss(sd, z0, captions_for(labels[idx], g), g)     # LDM Eq. 2 / 3, caption dropout
        optimizer.zero_grad(); loss.backward(); optimizer.step(); schedule.step()
        update_ema(ema, trained, 0.995, len(losses))
        losses.append(loss.item())
""")
md(r"""
## 11.5 Samples improving with training

How to tell whether the model has learned its captions: sample it (PLMS, 25 steps, guidance 5, three images per
digit from the prompts "a handwritten zero" ... "a handwritten nine", seed 1) and let the toy judge read the
images (a logistic regression on the real 8x8 digits that has never seen a generated image;
`diffusion_notes.mini_sd.judge`). Its ceiling, on the real test digits, is printed first. The images come from the
EMA weights, as in the shipped model. This notebook trains the first 200 of the run's 800 steps, judging after 100
and 200:
""")
code(r"""
print(f"judge ceiling on real test digits at {SIZE}x{SIZE}: {judge.agreement(test_images, test_labels):.3f}")
prompts, wanted = [caption(d) for d in range(10)], np.repeat(np.arange(10), 3)

def judged_ema():  # sample the EMA weights, 3 images per digit; the judge's agreement and the images
    sampled = copy.deepcopy(sd)
    torch.nn.ModuleList([sampled.unet, sampled.prompt_encoder.text_encoders[0]]).load_state_dict(ema.state_dict())
    sampled.eval().requires_grad_(False)
    with torch.no_grad():
        arrays = sampled.txt2img(prompts, steps=25, guidance_scale=5.0, seed=1, num_images=3, output="array").arrays
    return judge.agreement(arrays, wanted), arrays

here, start = {}, time.process_time()
for block in range(2):
    train_steps(100)
    here[len(losses)], arrays = judged_ema()
    print(f"step {len(losses)}: loss (last 50) {np.mean(losses[-50:]):.3f}, judge agrees on {here[len(losses)]:.0%} of 30 images")
print(f"{time.process_time() - start:.0f} s CPU for 200 steps and 2 rounds of judging")
""")
md(r"""
`scripts/train_notebook_11.py` runs the same recipe (the same seeds, autoencoder, tokenizer and training loop) for
all 800 steps on one thread, judges the EMA weights the same way at several steps, and saves its log and the
sampled images in `notebooks/data/11_training_run/`. The next cell checks that its recipe is the one
above and shows what it logged:
""")
code(r"""
run_dir = Path("data/11_training_run") if Path("data/11_training_run").exists() else Path("notebooks/data/11_training_run")
log = json.loads((run_dir / "log.json").read_text())
assert log["recipe"] == RECIPE, f"the logged run's recipe {log['recipe']} is not this notebook's {RECIPE}"
checkpoints = log["checkpoints"]
print(f"{'step':>5} {'CPU s':>7} {'loss':>7}  judge agreement (30 images)      [scripts/train_notebook_11.py, 1 thread]")
for c in checkpoints:
    print(f"{c['step']:5d} {c['cpu_s']:7.1f} {c['loss_last_50']:7.4f}  {c['agreement']:.0%}")
for step, agreement in here.items():
    logged = next(c["agreement"] for c in checkpoints if c["step"] == step)
    print(f"this notebook at step {step}: {agreement:.0%}; the logged run: {logged:.0%}")
final = checkpoints[-1]
assert final["agreement"] >= 0.8, "the logged run did not learn its captions"
assert final["agreement"] > checkpoints[0]["agreement"]

samples = np.load(run_dir / "samples.npz")
fig, axes = plt.subplots(len(checkpoints), 10, figsize=(10, 1.15 * len(checkpoints)))
for r, c in enumerate(checkpoints):
    for d in range(10):   # the first of the three images of each digit
        axes[r, d].imshow(samples[f"step_{c['step']}"][3 * d]); axes[r, d].axis("off")
    axes[r, 0].set_title(f"step {c['step']} ({c['cpu_s']:.0f} s CPU): {c['agreement']:.0%}", fontsize=8, loc="left")
""")
md(r"""
The judge's agreement stays near chance for the first 200 steps (13% at step 100 and 20% at step 200, in this
notebook and in the logged run alike, with the same losses), then rises to 30% at step 300, 67% at step 400 and 100%
at step 600, after 244.2 s of CPU on one thread (autoencoder included, judging not), and stays at 100% at step 800
(319.9 s). The sample rows show the same: at first every column draws much the same digit-like strokes whatever its
caption; from step 400 on the columns become the digits asked for. The loss falls steadily over the whole run
(0.1901 at step 100, 0.1241 at step 400, 0.0995 at step 800) and marks nothing where the captions start to matter:
the samples, not the loss, show when the conditioning has been learned. The data distribution comes first; the
caption comes later, through cross-attention to features that the text encoder is learning at the same time.

Against the shipped recipe (below), this one keeps the UNet, the text encoder, the batch, the learning rate with
its cosine decay and the EMA, and reduces the images (8x8 with an f = 2 autoencoder), the caption phrasings (one)
and the number of steps.
""")
code(r"""
fig, ax = plt.subplots(figsize=(5, 2.6))
ax.plot(np.convolve(losses, np.ones(20) / 20, mode="valid"))
ax.set(xlabel="training step", ylabel="loss (20-step mean)", yscale="log", title="LDM Eq. 2, this notebook's 200 steps");
""")
md(r"""
## 11.6 The shipped miniature

The same recipe at 32x32 (f = 8, SD's factor: 4x4x4 latents), with a larger autoencoder, all eight caption
phrasings and 1,000 steps, is the model
`txt2img` uses when no checkpoint is given. Its card gives sizes, timings and the judge's figures; here it is
loaded through `from_single_file`, the path of any SD 1.x checkpoint. The settings its tensors cannot show
(heads, scale factor, prediction type, native size) are read from the file's safetensors header.
""")
code(r"""
from diffusion_notes.checkpoints.metadata import read_header
from diffusion_notes.mini_sd import load_mini_sd, weights_path

header = read_header(weights_path())
print({k: v for k, v in header.items() if k.startswith(("diffusion_notes.", "modelspec."))})
mini = load_mini_sd(torch_dtype=torch.float32)
arrays = mini.txt2img(prompts, seed=0, output="array").arrays      # PLMS 50 steps, guidance 7.5, 32x32
print(f"shipped miniature: judge agrees on {judge.agreement(arrays, range(10)):.0%};"
      f" this notebook took {time.process_time() - notebook_start:.0f} s CPU")
fig, axes = plt.subplots(1, 10, figsize=(10, 1.3))
for d in range(10):
    axes[d].imshow(arrays[d]); axes[d].axis("off")
""")
md(r"""
**Summary.** A latent diffusion model is trained in two stages. First the autoencoder, on reconstruction plus a
tiny KL, and the scale factor $s = 1/\operatorname{std}(z)$ that makes its latents unit-variance. Then, with the
autoencoder frozen, the UNet and the text encoder together on LDM Eq. 2: encode, scale, `q_sample`, predict the
noise from the caption's features, with 10% of the captions empty so that classifier-free guidance has an
unconditional model to push away from. The result is a `StableDiffusion` like any other: it saves to and loads
from the original single-file layout, and the pipeline of notebook 12 samples it unchanged.
""")

nb = {"cells": [dict(c, source=c["source"].splitlines(keepends=True)) for c in cells],
      "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"},
                   "diffusion_notes": {"numbers": {"0.18215": "SD 1.x's latent scale factor: scale_factor in "
                                                   "CompVis's v1-inference.yaml (Rombach et al. 2022)"}}},
      "nbformat": 4, "nbformat_minor": 5}
for i, c in enumerate(nb["cells"]):
    c["id"] = f"cell-{i:02d}"
Path("notebooks/13_training_latent_diffusion.ipynb").write_text(json.dumps(nb, indent=1) + "\n")

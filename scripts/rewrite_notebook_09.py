"""Rewrite notebooks/09_text_to_image.ipynb onto the shipped miniature (cells replaced by index; outputs cleared)."""
import json
from pathlib import Path

path = Path("notebooks/09_text_to_image.ipynb")
nb = json.loads(path.read_text())
cells = nb["cells"]


def set_source(i, text, kind=None):
    if kind:
        assert cells[i]["cell_type"] == kind, (i, cells[i]["cell_type"])
    cells[i]["source"] = text.strip("\n").splitlines(keepends=True)
    if cells[i]["cell_type"] == "code":
        cells[i]["outputs"], cells[i]["execution_count"] = [], None


def replace_in(i, old, new):
    src = "".join(cells[i]["source"])
    assert old in src, (i, old[:60])
    set_source(i, src.replace(old, new))


# imports: the tiny random model's helpers are gone, the miniature and its judge come in
set_source(1, r"""
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

from diffusion_notes.display import show_source
from diffusion_notes.guidance import guided_eps_model
from diffusion_notes.mini_sd import judge, load_mini_sd
from diffusion_notes.models.config import unet_preset, vae_preset
from diffusion_notes.models.unet import UNetModel
from diffusion_notes.models.vae import AutoencoderKL
from diffusion_notes.pipeline import default_size, img2img, inpaint, strength_timesteps, txt2img
from diffusion_notes.samplers import make_timesteps
from diffusion_notes.stable_diffusion import StableDiffusion

torch.set_num_threads(1)  # the miniature gains nothing from threads on a shared 2-core CPU
plt.rcParams.update({"figure.dpi": 60, "image.interpolation": "nearest"})
""", "code")

set_source(6, r"""
## 9.3 Generating

With a CUDA GPU and a checkpoint in the environment variable `DIFFUSION_NOTES_SD_CHECKPOINT` (a `.safetensors`
single file or a diffusers folder), the next cell loads real weights in fp16 and renders 512x512 images.
Otherwise it loads the **miniature shipped with the package**: a complete SD 1.x-architecture model (the same
`AutoencoderKL`, `UNetModel` and `CLIPTextModel` classes, loaded by the same `from_single_file`) that this package
trained from scratch on scikit-learn's handwritten digits, 32x32 pixels, with captions such as "a handwritten
seven" (`diffusion_notes/mini_sd/MODEL_CARD.md`; notebook 11 shows the recipe). Its pictures are real: a judge
that has never seen a generated image reads the digit that was asked for. Everything below runs on it in seconds.
""", "markdown")

set_source(7, r"""
checkpoint = os.environ.get("DIFFUSION_NOTES_SD_CHECKPOINT")
REAL = bool(checkpoint) and torch.cuda.is_available()
if REAL:
    load = StableDiffusion.from_pretrained if os.path.isdir(checkpoint) else StableDiffusion.from_single_file
    sd = load(checkpoint, torch_dtype=torch.float16, device="cuda")
    prompts = ["a photograph of an astronaut riding a horse"] * 3
    edit_prompt, fill_prompt = "a watercolour of an astronaut riding a horse", "a red helmet"
    print(f"real weights: {checkpoint} ({sd.family}, {sd.prediction_type}-prediction), fp16 on CUDA")
else:
    sd = load_mini_sd(torch_dtype=torch.float32)
    prompts = ["a handwritten seven", "the digit 3", "a 5 written by hand"]
    edit_prompt, fill_prompt = "a handwritten one", "a handwritten eight"
    print("the shipped miniature (no GPU or no DIFFUSION_NOTES_SD_CHECKPOINT):")
(height, width), steps = default_size(sd), 50
print(f"native size {height}x{width} (default_size reads it from the file), PLMS {steps} steps, guidance 7.5")
print(f"scale factor {sd.scale_factor:.4f} (measured on its training data; SD 1.x: 0.18215), "
      f"{sd.config.unet.num_heads} UNet heads, {sd.text_encoders[0].config.num_attention_heads} CLIP heads")
""", "code")

set_source(8, r"""
time_embeddings, contexts = [], []
hooks = [sd.unet.time_embed.register_forward_hook(lambda module, inputs, output: time_embeddings.append(output.shape)),
         sd.unet.register_forward_pre_hook(lambda module, args: contexts.append(args[2].shape))]
result = txt2img(sd, prompts, steps=steps, sampler="plms", guidance_scale=7.5, height=height, width=width,
                 seed=42, return_trajectory="decoded")
for hook in hooks:
    hook.remove()
print("prompt features cat([uc, c]):", tuple(contexts[0]), " (the 3+3 guidance batch, 77 positions)")
print("UNet calls:", len(time_embeddings), "(PLMS: one per step, plus one more at the first step)")
print("time embedding of each call:", tuple(time_embeddings[0]), " final latents:", tuple(result.latents.shape))
print("\nPNG parameters:\n" + result.infotext(0))
if not REAL:
    print("\nthe judge reads:", list(judge.predicted_digits(result.arrays)), "for", prompts)
""", "code")

set_source(9, r"""
`return_trajectory="decoded"` kept $\hat x_0$ (`pred_x0`) of every step and decoded it: each row below is one
sample, and the columns show what the sampler currently believes the final image is. The composition (which digit,
where its strokes go) is decided in the first few steps, at high noise; the later steps only refine the strokes.
""", "markdown")

replace_in(10, 'fig.suptitle("real weights" if REAL else "tiny random model: the pixels mean nothing", fontsize=10)',
           'fig.suptitle("real weights" if REAL else "the shipped miniature", fontsize=10)')

replace_in(13, '''edits = [img2img(sd, start, "a watercolour of an astronaut riding a horse", strength=s, steps=steps, seed=1)
         for s in (0.3, 0.6, 0.9)]''', '''edits = [img2img(sd, start, edit_prompt, strength=s, steps=steps, seed=1) for s in (0.3, 0.6, 0.9)]''')
replace_in(13, 'ax.set_title(title if title == "start" else f"strength {title}", fontsize=9)',
           'ax.set_title(title if title == "start" else f"strength {title}:\\n{edit_prompt!r}", fontsize=8)')

replace_in(14, '''the final *latents* are the image's own; the pixels there change only by the VAE's encode-decode round trip, which
a trained VAE nearly inverts and the tiny random one does not.''', '''the final *latents* are the image's own; the pixels there change only by the VAE's encode-decode round trip, which
a trained VAE nearly inverts. Here the middle of the seven is repainted from the prompt "a handwritten eight".''')
replace_in(15, 'filled = inpaint(sd, start, Image.fromarray(mask), "a red helmet", steps=steps, seed=2)',
           'filled = inpaint(sd, start, Image.fromarray(mask), fill_prompt, steps=steps, seed=2)')

src16 = "".join(cells[16]["source"])
src16 = src16.replace('''From the command line: `python -m diffusion_notes txt2img --ckpt model.safetensors
--prompt "..."` writes `outputs/txt2img-samples/samples/00000.png` with these parameters inside the PNG.''',
'''From the command line: `python -m diffusion_notes txt2img --prompt "a handwritten seven"` runs the shipped
miniature (add `--ckpt model.safetensors` for a real checkpoint) and writes
`outputs/txt2img-samples/samples/00000.png` with these parameters inside the PNG.''')
set_source(16, src16)

for c in cells:
    if c["cell_type"] == "code":
        c["outputs"], c["execution_count"] = [], None
path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")

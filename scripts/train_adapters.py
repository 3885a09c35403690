r"""Train the two adapters of notebook 15 on the shipped miniature, and save them in the formats found in the wild.

    python scripts/train_adapters.py                 # both, into diffusion_notes/mini_sd/adapters (refuses to overwrite)
    python scripts/train_adapters.py --overwrite     # retrain and replace them
    python scripts/train_adapters.py --out-dir DIR   # somewhere else

1. **A LoRA for mirror writing** (``mirror_writing.safetensors``, kohya-ss format: ``lora_unet_*.lora_down.weight``,
   ``.lora_up.weight``, ``.alpha``, and sd-scripts' ``ss_*`` metadata). The miniature only ever saw digits written
   the usual way round; the LoRA is trained on the same training digits flipped left to right, with the same
   captions, so that with the LoRA merged "a handwritten seven" comes out mirrored. Only the factors
   :math:`A` (``lora_down``) and :math:`B` (``lora_up``) of Hu et al. 2021 Eq. 3 are trained, on every linear layer
   and 1x1 convolution of the UNet's transformer blocks (sd-scripts' default targets), rank 8, :math:`\alpha = 4`;
   :math:`A` starts as sd-scripts' (Kaiming-uniform) and :math:`B` at zero, so training starts from the model itself.
   Mirror writing rather than bold strokes: the frozen autoencoder cannot decode bold digits (notebook 15 measures
   why), and an adapter of the UNet can only ask the decoder for what it can draw.
2. **A textual-inversion embedding** (``boldface.safetensors``, AUTOMATIC1111's ``emb_params`` format, so the word
   is the file's stem): one new 64-wide vector for the new word "boldface", trained (Gal et al. 2022, Eq. 2) on the
   20% of training sevens with the most ink, every weight of the model frozen. It starts from the embedding of
   "digit", so the word first means nothing in particular; the images alone teach it "a bold seven".

Both use LDM Eq. 2 (``training.latent_diffusion_loss``) on the frozen autoencoder's latents, one seeded generator
and one thread. After saving, each file is loaded back through ``StableDiffusion.load_lora`` /
``load_textual_inversion`` and must reproduce the trained model's noise prediction.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_notes.adapters.lora_training import (attach_lora, kohya_names, kohya_state_dict,  # noqa: E402
                                                   latent_moments, lora_targets)
from diffusion_notes.mini_sd import tokenizer_path, weights_path  # noqa: E402
from diffusion_notes.mini_sd.data import TEMPLATES, load_images, sample_captions  # noqa: E402
from diffusion_notes.models.vae import DiagonalGaussianDistribution  # noqa: E402
from diffusion_notes.stable_diffusion import StableDiffusion  # noqa: E402
from diffusion_notes.training import latent_diffusion_loss  # noqa: E402

DEFAULT_OUT = ROOT / "diffusion_notes" / "mini_sd" / "adapters"
LORA_FILE, EMBEDDING_FILE = "mirror_writing.safetensors", "boldface.safetensors"
WORD, INIT_WORD, BOLD_DIGIT, BOLD_FRACTION = "boldface", "digit", 7, 0.2


def load_for_training() -> StableDiffusion:
    """The shipped miniature in float32 with plain (trainable) convolutions."""
    return StableDiffusion.from_single_file(weights_path(), tokenizer=tokenizer_path(), torch_dtype=torch.float32,
                                            prepack=False)


def mirrored(images: torch.Tensor) -> torch.Tensor:
    """The digits written the other way round: flipped left to right."""
    return images.flip(-1)


def ink(images: torch.Tensor) -> torch.Tensor:
    """Stroke amount per image: the fraction of pixels brighter than mid-grey ((N, 3, H, W) in [-1, 1])."""
    return (images.mean(dim=1) > 0).float().mean(dim=(1, 2))


def train_lora(steps: int, rank: int, alpha: float, lr: float, batch: int, seed: int, log_every: int = 100):
    sd = load_for_training().requires_grad_(False)
    images, labels = load_images("train")
    moments = latent_moments(sd, mirrored(images))
    g = torch.Generator().manual_seed(seed)
    names = kohya_names(sd)
    wrapped = attach_lora(sd.unet, lora_targets(sd.unet), rank, alpha, g)
    params = [p for m in wrapped.values() for p in (m.down.weight, m.up.weight)]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    sd.unet.train()
    losses, start = [], time.process_time()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=g)
        z0 = sd.scale_factor * DiagonalGaussianDistribution(moments[idx]).sample(g)
        loss = latent_diffusion_loss(sd, z0, sample_captions(labels[idx], p_uncond=0.1, generator=g), g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0:
            print(f"  LoRA step {step + 1}: loss (last {log_every}) {sum(losses[-log_every:]) / log_every:.4f}", flush=True)
    seconds = time.process_time() - start
    sd.unet.eval()
    trainable = sum(p.numel() for p in params)
    return sd, names, wrapped, losses, seconds, trainable


# --------------------------------------------------------------------------------------------
# Textual inversion
# --------------------------------------------------------------------------------------------


def bold_examples(digit: int = BOLD_DIGIT, fraction: float = BOLD_FRACTION) -> torch.Tensor:
    """The training images of ``digit`` whose ink is in the top ``fraction``: real, heavily drawn digits."""
    images, labels = load_images("train")
    chosen = images[labels == digit]
    amount = ink(chosen)
    return chosen[amount >= torch.quantile(amount, 1 - fraction)]


def word_captions(word: str) -> list[str]:
    """The miniature's phrasings that name the digit by a word, with ``word`` in its place (Gal et al.'s
    templates "a photo of a S*" play this role)."""
    return [t.format(name=word) for t in TEMPLATES if "{name}" in t]


def train_embedding(steps: int, lr: float, batch: int, seed: int, log_every: int = 100):
    sd = load_for_training().requires_grad_(False)
    tokenizer, encoder = sd.tokenizers[0], sd.text_encoders[0]
    table = encoder.get_input_embeddings().weight
    init = table[tokenizer.convert_tokens_to_ids(INIT_WORD + "</w>")].detach().clone()
    sd.load_textual_inversion({WORD: init}, token=WORD)  # the new token and row: v_* starts as "digit"
    table = encoder.get_input_embeddings().weight
    row = tokenizer.convert_tokens_to_ids(WORD)
    frozen_copy = table.detach().clone()
    table.requires_grad_(True)
    optimizer = torch.optim.Adam([table], lr=lr)  # no weight decay: rows without gradient stay exactly as they are
    examples = bold_examples()
    moments = latent_moments(sd, examples)
    captions = word_captions(WORD)
    g = torch.Generator().manual_seed(seed)
    losses, start = [], time.process_time()
    for step in range(steps):
        idx = torch.randint(0, len(examples), (batch,), generator=g)
        z0 = sd.scale_factor * DiagonalGaussianDistribution(moments[idx]).sample(g)
        chosen = [captions[int(k)] for k in torch.randint(0, len(captions), (batch,), generator=g)]
        loss = latent_diffusion_loss(sd, z0, chosen, g)
        optimizer.zero_grad()
        loss.backward()
        keep = torch.ones(table.shape[0], dtype=torch.bool)
        keep[row] = False
        table.grad[keep] = 0  # Gal et al.: only v_* is optimised
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0:
            print(f"  embedding step {step + 1}: loss (last {log_every}) {sum(losses[-log_every:]) / log_every:.4f}", flush=True)
    seconds = time.process_time() - start
    table.requires_grad_(False)
    others = torch.arange(table.shape[0]) != row
    assert torch.equal(table[others], frozen_copy[others]), "a row other than the new word's changed"
    return sd, table[row].detach().clone(), losses, seconds, len(examples)


# --------------------------------------------------------------------------------------------


@torch.no_grad()
def eps_on(sd: StableDiffusion, prompt: str, seed: int = 123) -> torch.Tensor:
    """One noise prediction, to compare a trained model with the file loaded back."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 4, 4, generator=g)
    context, _ = sd.prompt_encoder([prompt, prompt])
    return sd.unet(x, torch.tensor([500, 900]), context=context)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-steps", type=int, default=600)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=4.0)
    parser.add_argument("--lora-lr", type=float, default=3e-3)
    parser.add_argument("--embedding-steps", type=int, default=400)
    parser.add_argument("--embedding-lr", type=float, default=5e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--only", choices=("lora", "embedding"), default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    targets = [f for f, part in ((LORA_FILE, "lora"), (EMBEDDING_FILE, "embedding")) if args.only in (None, part)]
    existing = [str(out / f) for f in targets if (out / f).exists()]
    if existing and not args.overwrite:
        print(f"error: {', '.join(existing)} exist; pass --overwrite to replace them.", file=sys.stderr)
        return 2
    command = " ".join(["python scripts/train_adapters.py", *(argv if argv is not None else sys.argv[1:])])

    if args.only in (None, "lora"):
        print(f"LoRA: rank {args.lora_rank}, alpha {args.lora_alpha}, {args.lora_steps} steps of batch {args.batch}")
        sd, names, wrapped, losses, seconds, trainable = train_lora(args.lora_steps, args.lora_rank, args.lora_alpha,
                                                             args.lora_lr, args.batch, args.seed)
        tensors = kohya_state_dict(names, wrapped, args.lora_alpha)
        metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(args.lora_rank),
                    "ss_network_alpha": str(args.lora_alpha), "ss_max_train_steps": str(args.lora_steps),
                    "ss_learning_rate": str(args.lora_lr), "ss_train_batch_size": str(args.batch),
                    "ss_seed": str(args.seed), "ss_base_model_version": "sd_v1", "ss_sd_model_name": "mini-sd-digits",
                    "diffusion_notes.command": command, "diffusion_notes.cpu_seconds": f"{seconds:.0f}",
                    "diffusion_notes.final_loss": f"{sum(losses[-50:]) / 50:.4f}",
                    "diffusion_notes.style": "mirror writing: the training digits flipped left to right"}
        path = out / LORA_FILE
        save_file(tensors, str(path), metadata=metadata)
        expected = eps_on(sd, "a handwritten seven")
        fresh = load_for_training()
        fresh.load_lora(path)
        difference = (eps_on(fresh, "a handwritten seven") - expected).abs().max().item()
        assert difference < 1e-4, difference
        print(f"LoRA: {trainable} trained parameters in {len(wrapped)} layers, {seconds:.0f} s CPU, "
              f"loss (last 50) {sum(losses[-50:]) / 50:.4f}; {path} {path.stat().st_size} bytes; "
              f"loaded back with load_lora: max |eps difference| {difference:.2e}")

    if args.only in (None, "embedding"):
        print(f"embedding: '{WORD}' from '{INIT_WORD}', {args.embedding_steps} steps of batch {args.batch}")
        sd, vector, losses, seconds, count = train_embedding(args.embedding_steps, args.embedding_lr, args.batch, args.seed)
        path = out / EMBEDDING_FILE
        metadata = {"name": WORD, "step": str(args.embedding_steps), "sd_checkpoint_name": "mini-sd-digits",
                    "diffusion_notes.command": command, "diffusion_notes.cpu_seconds": f"{seconds:.0f}",
                    "diffusion_notes.final_loss": f"{sum(losses[-50:]) / 50:.4f}",
                    "diffusion_notes.examples": f"{count} training sevens with the most ink (top {BOLD_FRACTION:.0%})",
                    "diffusion_notes.init_word": INIT_WORD}
        save_file({"emb_params": vector[None].contiguous()}, str(path), metadata=metadata)
        expected = eps_on(sd, f"a handwritten {WORD}")
        fresh = load_for_training()
        fresh.load_textual_inversion(path)  # the token is the file's stem, as in AUTOMATIC1111
        difference = (eps_on(fresh, f"a handwritten {WORD}") - expected).abs().max().item()
        assert difference < 1e-5, difference
        print(f"embedding: 1 x {vector.numel()} trained values from {count} images, {seconds:.0f} s CPU, "
              f"loss (last 50) {sum(losses[-50:]) / 50:.4f}; {path} {path.stat().st_size} bytes; "
              f"loaded back with load_textual_inversion: max |eps difference| {difference:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

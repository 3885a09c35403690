"""What every benchmark shares: the random models (ours and diffusers' with identical tensors), the
alternating timer, the table printer, and the thread settings.

diffusers is imported here, never by ``diffusion_notes``: it is the reference we measure against.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field

import torch


def configure_threads(threads: int | None = None) -> int:
    """Use ``threads`` torch threads (default: every core). Call before the first torch op.

    On a busy machine OpenMP's spin-waiting makes 2 threads slower than 1 (shared/NOTES.md), so the
    benchmarks set ``OMP_WAIT_POLICY=PASSIVE`` in the environment they document; this only reads it.
    """
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def machine() -> str:
    """One line: CPU, cores, torch version, thread settings."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")


# --------------------------------------------------------------------------------------------
# models with identical weights
# --------------------------------------------------------------------------------------------

#: diffusers' ``UNet2DConditionModel`` arguments of SD 1.5 (its defaults, with SD 1.x's text width).
SD15_UNET = dict(cross_attention_dim=768, attention_head_dim=8)
#: A tiny SD 1.x-shaped UNet for the smoke tests (two levels, one transformer level).
TINY_UNET = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
                 norm_num_groups=32, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), sample_size=8)


def unet_pair(size: str = "full", seed: int = 0, prepack: bool = True):
    """``(ours, theirs, context_dim)``: diffusers' UNet with random weights and ours holding the same tensors.

    Ours receives diffusers' tensors renamed (``checkpoints.diffusers_layout``) with
    ``load_state_dict(assign=True)``: the two models share their weight storage, so a full-size
    pair costs 3.4 GB, not 6.9 GB, and both read exactly the same numbers. ``prepack`` (default, as
    the loaders do for the CPU) then gives ours oneDNN-prepacked convolutions (``models.prepacked``),
    which hold their own reordered copy of the convolution weights.
    """
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    kwargs = SD15_UNET if size == "full" else TINY_UNET
    theirs = UNet2DConditionModel(**kwargs).eval().requires_grad_(False)
    ours = ours_holding(theirs, prepack)
    return ours, theirs, ours.config.context_dim


def ours_holding(theirs, prepack: bool = True):
    """Our ``UNetModel`` holding the tensors of diffusers' UNet ``theirs`` (renamed, shared; see :func:`unet_pair`)."""
    from diffusion_notes.checkpoints import diffusers_layout as layout
    from diffusion_notes.models.prepacked import prepack_convolutions
    from diffusion_notes.models.unet import UNetModel

    config = layout.unet_config_from_diffusers(dict(theirs.config))
    with torch.device("meta"):
        ours = UNetModel(config)
    ours.load_state_dict(layout.unet_from_diffusers(theirs.state_dict(), config), strict=True, assign=True)
    ours = ours.eval().requires_grad_(False)
    return prepack_convolutions(ours) if prepack else ours


def unet_inputs(batch: int, side: int, context_dim: int, seed: int = 1):
    """Latents ``(batch, 4, side, side)``, timesteps and prompt features, float32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, side, side, generator=g)
    t = torch.full((batch,), 981, dtype=torch.long)
    context = torch.randn(batch, 77, context_dim, generator=g)
    return x, t, context


def run_ours(unet, x, t, context):
    return unet(x.to(unet.time_embed[0].weight.dtype), t, context).float()


def run_theirs(unet, x, t, context):
    dtype = unet.conv_out.weight.dtype
    return unet(x.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample.float()


# --------------------------------------------------------------------------------------------
# timing and tables
# --------------------------------------------------------------------------------------------


@dataclass
class Timings:
    """Seconds of each alternated run, by contestant."""

    runs: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.runs.setdefault(name, []).append(seconds)

    def median(self, name: str) -> float:
        return statistics.median(self.runs[name])

    def spread(self, name: str) -> str:
        values = self.runs[name]
        return f"{min(values):.3g}-{max(values):.3g}"


def alternate(contestants: dict, repeats: int, warmup: int = 1) -> Timings:
    """Run every contestant (``name -> zero-argument callable``) in turn, ``repeats`` rounds, after
    ``warmup`` untimed rounds: A B A B ..., so both see the same load on a shared machine."""
    timings = Timings()
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            for name, run in contestants.items():
                start = time.perf_counter()
                run()
                elapsed = time.perf_counter() - start
                if round_ >= warmup:
                    timings.add(name, elapsed)
    return timings


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (what docs/benchmarks.md keeps)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


# --------------------------------------------------------------------------------------------
# whole pipelines with random weights (benchmarks 3 and 4, the GPU script)
# --------------------------------------------------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyz!"
_MERGES = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>")]


def write_tokenizer(folder, pad_token: str = "<|endoftext|>"):
    """A CLIP BPE tokenizer over single letters plus four merges, 77 positions (no download): prompts
    become the same token ids in both pipelines, and the text encoder's cost does not depend on which
    ids those are. Also the tests' tiny tokenizer (``tests/models/builders.py``). Returns ``folder``."""
    import json
    from pathlib import Path

    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = list(_LETTERS) + [c + "</w>" for c in _LETTERS] + ["".join(m) for m in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in _MERGES) + "\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                  pad_token=pad_token).save_pretrained(folder)
    return folder


def random_sd15_pipeline(size: str = "full", tokenizer_folder=None, seed: int = 0, scheduler=None,
                         dtype: torch.dtype = torch.float32):
    """diffusers' ``StableDiffusionPipeline`` with random weights, SD 1.5's shapes (``size="full"``: UNet
    859.5M, VAE 83.7M, CLIP ViT-L text 123M parameters) or tiny ones, created directly in ``dtype``."""
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = tokenizer_folder or tempfile.mkdtemp(prefix="tokenizer-")
    write_tokenizer(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    torch.manual_seed(seed)
    full = size == "full"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # no float32 copy first: 2 GB instead of 4.3 GB for fp16 SD 1.5
    try:
        return _sd15_pipeline(full, tokenizer, scheduler)
    finally:
        torch.set_default_dtype(default)


def _sd15_pipeline(full: bool, tokenizer, scheduler):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408 if full else 64, hidden_size=768 if full else 64, intermediate_size=3072 if full else 128,
        num_attention_heads=12 if full else 1, num_hidden_layers=12 if full else 2, max_position_embeddings=77,
        hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512) if full else (32, 64), layers_per_block=2 if full else 1,
                        down_block_types=("DownEncoderBlock2D",) * (4 if full else 2),
                        up_block_types=("UpDecoderBlock2D",) * (4 if full else 2), latent_channels=4,
                        norm_num_groups=32)
    unet = UNet2DConditionModel(**(SD15_UNET if full else dict(TINY_UNET, cross_attention_dim=64)))
    scheduler = scheduler or DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe

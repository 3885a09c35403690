"""diffusers' and transformers' Stable Diffusion models with random weights: the one place that builds them.

The benchmarks measure SD 1.5- and SDXL-shaped pipelines (full size or tiny); the tests use tiny
checkpoints of every family as independent oracles (``tests/models/builders.py`` writes them to disk).
This module imports neither ``diffusion_notes`` nor the benchmarks' timers, so the tests depend on it
alone, and diffusers and transformers only inside the functions (the GPU benchmark installs diffusers
after it starts).

Sizes respect the rules ``checkpoints.detect`` applies to weights (they cannot be seen in tensors):
SD 1.x has 8 attention heads, SD 2.x / SDXL 64 channels per head, CLIP text encoders 64 channels
per head with ``quick_gelu`` for OpenAI CLIP and ``gelu`` for OpenCLIP.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: The families of the tests' tiny checkpoints (:func:`tiny_pipeline`).
FAMILIES = ("sd1", "sd1-inpaint", "sd2", "sdxl")

#: diffusers' ``UNet2DConditionModel`` arguments of SD 1.5 (its defaults, with SD 1.x's text width).
SD15_UNET = dict(cross_attention_dim=768, attention_head_dim=8)
#: A tiny SD 1.x-shaped UNet for the smoke tests (two levels, one transformer level).
TINY_UNET = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
                 norm_num_groups=32, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), sample_size=8)

_LETTERS = "abcdefghijklmnopqrstuvwxyz!"
_MERGES = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>")]


# --------------------------------------------------------------------------------------------
# parts
# --------------------------------------------------------------------------------------------


def write_tokenizer(folder, pad_token: str = "<|endoftext|>") -> Path:
    """A CLIP BPE tokenizer over single letters plus four merges, 77 positions (no download): prompts
    become the same token ids in both pipelines, and the text encoder's cost does not depend on which
    ids those are. Returns ``folder``."""
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


def load_tokenizer(folder, pad_token: str = "<|endoftext|>"):
    """:func:`write_tokenizer` at ``folder``, loaded. open_clip pads with "!" (id 0): SD 2.x's tokenizer and
    SDXL's ``tokenizer_2`` do too."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(write_tokenizer(folder, pad_token)))


def ddim_scheduler(prediction_type: str = "epsilon"):
    """diffusers' ``DDIMScheduler`` as Stable Diffusion's checkpoints configure it."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def clip_text_encoder(tokenizer, hidden: int, layers: int, heads: int, act: str = "quick_gelu",
                      intermediate: int | None = None, projection_dim: int | None = None):
    """transformers' CLIP text tower over ``tokenizer``'s special ids: CLIP's 49408-token vocabulary from
    ``hidden`` 768 up (else the tiny tokenizer's 64), ``intermediate`` 4 x ``hidden`` unless given; with a
    ``projection_dim``, ``CLIPTextModelWithProjection`` (SDXL's second encoder). Training mode, as built."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408 if hidden >= 768 else 64, hidden_size=hidden, intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
        projection_dim=projection_dim or hidden, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection_dim else CLIPTextModel)(config)


def clip_vit_l(tokenizer):
    """CLIP ViT-L/14's text tower (123M parameters), SD 1.x's and SDXL's first text encoder: (B, 77) -> (B, 77, 768)."""
    return clip_text_encoder(tokenizer, 768, 12, 12)


def vae(full: bool, **config):
    """diffusers' ``AutoencoderKL``: SD's (four levels, 83.7M parameters) or a tiny two-level one (f = 2)."""
    from diffusers import AutoencoderKL

    levels = 4 if full else 2
    return AutoencoderKL(block_out_channels=(128, 256, 512, 512) if full else (32, 64), layers_per_block=2 if full else 1,
                         down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                         latent_channels=4, norm_num_groups=32, **config)


def sd15_unet(full: bool, tiny_context_dim: int = 64):
    """diffusers' UNet of SD 1.5 (859.5M parameters) or :data:`TINY_UNET` over ``tiny_context_dim``-wide
    prompt features (64, the tiny text encoders' width; the UNet-only benchmarks use 32)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**(SD15_UNET if full else dict(TINY_UNET, cross_attention_dim=tiny_context_dim)))


def tiny_unet(family: str):
    """The tests' tiny UNet of ``family``: two levels of 32 and 64 channels, two blocks each, 8 latent px."""
    from diffusers import UNet2DConditionModel

    common = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=8, norm_num_groups=32)
    if family in ("sd1", "sd1-inpaint"):
        return UNet2DConditionModel(
            in_channels=9 if family == "sd1-inpaint" else 4, out_channels=4, cross_attention_dim=64,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=8, **common,
        )
    # SD 2.x and SDXL: linear proj_in, 64 channels per head, attention only at the coarse level.
    kwargs = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                  attention_head_dim=(1, 1), use_linear_projection=True, in_channels=4, out_channels=4, **common)
    if family == "sd2":
        return UNet2DConditionModel(cross_attention_dim=64, upcast_attention=True, **kwargs)
    return UNet2DConditionModel(
        cross_attention_dim=64 + 128, transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8, **kwargs,
    )


def sdxl_unet(full: bool):
    """diffusers' UNet of SDXL 1.0 base (2.6B parameters), or the tests' tiny SDXL UNet."""
    from diffusers import UNet2DConditionModel

    if not full:
        return tiny_unet("sdxl")
    return UNet2DConditionModel(
        sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(320, 640, 1280),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)


def _sd_pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


# --------------------------------------------------------------------------------------------
# whole pipelines
# --------------------------------------------------------------------------------------------


def tiny_pipeline(family: str, work_dir, seed: int = 0):
    """The tests' diffusers pipeline of ``family`` in :data:`FAMILIES` with random tiny weights, in eval
    mode (tokenizers written under ``work_dir``)."""
    from diffusers import StableDiffusionXLPipeline

    torch.manual_seed(seed)
    work_dir = Path(work_dir)
    tok = load_tokenizer(work_dir / "tok", pad_token="!" if family == "sd2" else "<|endoftext|>")
    if family == "sdxl":
        tok_2 = load_tokenizer(work_dir / "tok2", pad_token="!")
        return StableDiffusionXLPipeline(
            vae=vae(False, sample_size=16).eval(), text_encoder=_tiny_clip(tok, 64, "quick_gelu"),
            text_encoder_2=_tiny_clip(tok_2, 128, "gelu", projection_dim=32), tokenizer=tok,
            tokenizer_2=tok_2, unet=tiny_unet(family).eval(), scheduler=ddim_scheduler("epsilon"),
        )
    return _sd_pipeline(vae(False, sample_size=16).eval(), _tiny_clip(tok, 64, "gelu" if family == "sd2" else "quick_gelu"),
                        tok, tiny_unet(family).eval(), ddim_scheduler("v_prediction" if family == "sd2" else "epsilon"))


def _tiny_clip(tokenizer, hidden: int, act: str, projection_dim: int | None = None):
    return clip_text_encoder(tokenizer, hidden, 3, hidden // 64, act, intermediate=2 * hidden,
                             projection_dim=projection_dim).eval()


def random_sd15_pipeline(size: str = "full", tokenizer_folder=None, seed: int = 0, scheduler=None,
                         dtype: torch.dtype = torch.float32):
    """diffusers' ``StableDiffusionPipeline`` with random weights, SD 1.5's shapes (``size="full"``: UNet
    859.5M, VAE 83.7M, CLIP ViT-L text 123M parameters) or tiny ones, created directly in ``dtype``."""
    import tempfile

    tok = load_tokenizer(tokenizer_folder or tempfile.mkdtemp(prefix="tokenizer-"))
    torch.manual_seed(seed)
    full = size == "full"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # no float32 copy first: 2 GB instead of 4.3 GB for fp16 SD 1.5
    try:
        text = clip_vit_l(tok) if full else clip_text_encoder(tok, 64, 2, 1, intermediate=128)
        return _sd_pipeline(vae(full), text, tok, sd15_unet(full), scheduler or ddim_scheduler())
    finally:
        torch.set_default_dtype(default)


def diffusers_pipeline(family: str, full: bool, work: Path):
    """diffusers' pipeline of ``family`` ("sd1" or "sdxl") with random weights, on the current default device
    (the GPU benchmark's; SDXL 1.0 base: CLIP ViT-L + OpenCLIP ViT-bigG)."""
    from diffusers import StableDiffusionXLPipeline

    autoencoder = vae(full, scaling_factor=0.13025 if family == "sdxl" else 0.18215)
    scheduler = ddim_scheduler()
    tok = load_tokenizer(work / "tokenizer")
    if family == "sd1":
        unet = sd15_unet(full)
        text = clip_vit_l(tok) if full else clip_text_encoder(tok, 64, 2, 1)
        return _sd_pipeline(autoencoder, text, tok, unet, scheduler)
    tok_2 = load_tokenizer(work / "tokenizer_2", pad_token="!")
    unet = sdxl_unet(full)
    if full:
        text, text_2 = clip_vit_l(tok), clip_text_encoder(tok_2, 1280, 32, 20, "gelu", projection_dim=1280)
    else:
        text, text_2 = clip_text_encoder(tok, 64, 2, 1), clip_text_encoder(tok_2, 128, 2, 2, "gelu", projection_dim=32)
    return StableDiffusionXLPipeline(vae=autoencoder, text_encoder=text, text_encoder_2=text_2, tokenizer=tok,
                                     tokenizer_2=tok_2, unet=unet, scheduler=scheduler)

"""Architecture settings for Stable Diffusion's networks, with the values of each released family.

The names are CompVis's (the ``params:`` of ``unet_config`` / ``first_stage_config`` in the original
YAML files ``v1-inference.yaml``, ``v2-inference-v.yaml``, ``sd_xl_base.yaml``), so a YAML file maps
onto these dataclasses field by field. One difference: CompVis says *where* attention goes with
``attention_resolutions`` (downsampling factors) plus one ``transformer_depth``; here
``transformer_depth`` is one number per resolution level and 0 means "no attention at this level",
which is how SDXL's ``transformer_depth: [0, 2, 10]`` already reads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import SettingsError

__all__ = ["UNetConfig", "AutoencoderConfig", "TextEncoderSpec", "StableDiffusionConfig", "FAMILIES", "TEXT_SPECS",
           "SCALE_FACTORS", "unet_preset", "vae_preset"]

#: The model families this package knows, named as in ``StableDiffusion.family``.
FAMILIES = ("sd1", "sd2", "sdxl")


@dataclass(frozen=True)
class UNetConfig:
    """CompVis ``UNetModel`` parameters (``ldm.modules.diffusionmodules.openaimodel``)."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    #: transformer blocks per SpatialTransformer at each level; 0 = no attention at that level.
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)
    #: transformer blocks in the middle block's SpatialTransformer.
    transformer_depth_middle: int = 1
    context_dim: int = 768
    #: exactly one of num_heads / num_head_channels is used (-1 = unused), as in CompVis.
    num_heads: int = 8
    num_head_channels: int = -1
    use_linear_in_transformer: bool = False
    #: width of the pooled-text + size/crop vector (SDXL ``adm_in_channels``); None = no ``label_emb``.
    adm_in_channels: int | None = None
    #: width of each of SDXL's six size/crop Fourier embeddings (256 in SDXL).
    addition_time_embed_dim: int = 256
    #: compute the attention softmax in float32 (SD 2.1 needs it in fp16).
    upcast_attention: bool = False

    def __post_init__(self):
        # Checked here, at construction, so a bad width fails with its name instead of deep in nn.GroupNorm.
        _check_groupnorm_widths("UNetConfig", "model_channels", self.model_channels, self.channel_mult)
        if len(self.transformer_depth) < len(self.channel_mult):
            raise SettingsError("transformer_depth", f"UNetConfig: transformer_depth={self.transformer_depth} needs "
                                f"an entry for every level of channel_mult={self.channel_mult} (0 = no attention).")
        if self.num_heads <= 0 and self.num_head_channels <= 0:
            raise SettingsError("num_heads", "UNetConfig: set num_heads (e.g. 8, SD 1.x) or num_head_channels "
                                "(e.g. 64, SD 2.x/XL); both are -1, so the attention layers cannot be built.")
        widths = [self.model_channels * m for m, d in zip(self.channel_mult, self.transformer_depth) if d > 0]
        if self.transformer_depth_middle > 0:
            widths.append(self.model_channels * self.channel_mult[-1])
        option, split = ("num_head_channels", self.num_head_channels) if self.num_head_channels > 0 else \
            ("num_heads", self.num_heads)
        bad = sorted({w for w in widths if w % split})
        if bad:
            raise SettingsError(option, f"UNetConfig: {option}={split} does not divide the attention widths {bad}; "
                                f"choose a divisor of every width that has attention.")

    @property
    def time_embed_dim(self) -> int:
        """Width of the time embedding: ``4 * model_channels`` (1280 for SD's 320)."""
        return 4 * self.model_channels

    def heads_and_dim(self, channels: int) -> tuple[int, int]:
        """(number of heads, channels per head) of a SpatialTransformer on ``channels`` channels."""
        if self.num_head_channels > 0:
            return channels // self.num_head_channels, self.num_head_channels
        return self.num_heads, channels // self.num_heads


@dataclass(frozen=True)
class AutoencoderConfig:
    """CompVis ``AutoencoderKL`` ``ddconfig`` plus ``embed_dim`` (``ldm.models.autoencoder``)."""

    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4

    def __post_init__(self):
        _check_groupnorm_widths("AutoencoderConfig", "ch", self.ch, self.ch_mult)


def _check_groupnorm_widths(what: str, option: str, base: int, mult: tuple[int, ...]) -> None:
    """Every width of a UNet or VAE level feeds a GroupNorm with 32 groups (CompVis ``normalization`` /
    ``Normalize``), so it must be a positive multiple of 32."""
    widths = [base * m for m in mult]
    bad = [w for w in widths if w <= 0 or w % 32]
    if bad:
        raise SettingsError(option, f"{what}: every level's width ({option} x mult = {widths}) must be a positive "
                            f"multiple of 32, because GroupNorm(32) normalises it; {bad} are not (e.g. {option}=32 or 64).")


@dataclass(frozen=True)
class TextEncoderSpec:
    """Which hidden state of a CLIP text encoder becomes the UNet's context.

    ``layer`` is ``"last"`` or ``"penultimate"`` (``hidden_states[-2]``); ``final_layer_norm`` says
    whether CLIP's final LayerNorm is applied to it. ``pooled`` marks the encoder whose projected
    pooled output (``text_embeds``) SDXL feeds into ``label_emb``.
    """

    layer: str = "last"
    final_layer_norm: bool = True
    pooled: bool = False


@dataclass(frozen=True)
class StableDiffusionConfig:
    """Everything needed to rebuild the networks of one Stable Diffusion model and interpret their output.

    ``family`` is "sd1", "sd2" or "sdxl"; ``prediction_type`` "eps" or "v" (CompVis ``parameterization``,
    diffusers' scheduler ``prediction_type`` "epsilon" / "v_prediction"); ``scale_factor`` is CompVis's
    ``scale_factor`` (diffusers' VAE ``scaling_factor``). The checkpoint readers build it; the model
    (``diffusion_notes.stable_diffusion.StableDiffusion.config``) holds it.
    """

    family: str
    unet: UNetConfig
    vae: AutoencoderConfig
    prediction_type: str = "eps"
    scale_factor: float = 0.18215
    #: (height, width) in pixels the model was trained at; None = the family's release (pipeline.default_size).
    native_size: tuple[int, int] | None = None


# The three released families, as written in their CompVis YAML files.
_UNET_PRESETS = {
    "sd1": UNetConfig(),
    "sd2": UNetConfig(
        context_dim=1024, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True, upcast_attention=True
    ),
    "sdxl": UNetConfig(
        channel_mult=(1, 2, 4),
        transformer_depth=(0, 2, 10),
        transformer_depth_middle=10,
        context_dim=2048,
        num_heads=-1,
        num_head_channels=64,
        use_linear_in_transformer=True,
        adm_in_channels=2816,
    ),
}

#: Text-conditioning recipe per family (see ``models.text``).
TEXT_SPECS = {
    # SD 1.x: CLIP ViT-L/14 ``last_hidden_state`` (FrozenCLIPEmbedder, layer="last").
    "sd1": (TextEncoderSpec("last", True),),
    # SD 2.x: OpenCLIP ViT-H/14 penultimate layer + ln_final (FrozenOpenCLIPEmbedder, layer="penultimate").
    # Stored, as diffusers does, as an encoder whose last layer was dropped, so "last" + LayerNorm.
    "sd2": (TextEncoderSpec("last", True),),
    # SDXL: CLIP-L and OpenCLIP bigG penultimate states without ln_final, bigG's pooled projection.
    "sdxl": (TextEncoderSpec("penultimate", False), TextEncoderSpec("penultimate", False, pooled=True)),
}

#: Latent scale factor (``scale_factor`` in the YAML): unit-variance latents for the diffusion model.
SCALE_FACTORS = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}


def unet_preset(family: str, **overrides) -> UNetConfig:
    """The released UNet configuration of ``family`` ("sd1", "sd2", "sdxl"), with ``overrides``."""
    return replace(_UNET_PRESETS[family], **overrides)


def vae_preset(**overrides) -> AutoencoderConfig:
    """The ``AutoencoderKL`` shared by SD 1.x, 2.x and XL (f=8, 4 latent channels)."""
    return replace(AutoencoderConfig(), **overrides)

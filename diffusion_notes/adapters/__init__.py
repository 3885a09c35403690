"""Adapters for a loaded Stable Diffusion model: LoRA files (:mod:`.lora`, formats in :mod:`.lora_keys`, PEFT's
scale in :mod:`.peft_config`), AUTOMATIC1111's ``<lora:name:weight>`` prompt tags (:mod:`.prompt_tags`) and
textual-inversion embeddings (:mod:`.textual_inversion`). The VAE swap is
:func:`diffusion_notes.checkpoints.vae_file.load_vae` with ``StableDiffusion.with_vae``."""

from .lora import (AppliedLora, a1111_lora_hash, applied_loras, load_lora, lora_delta, lora_hash_list, lora_hashes,
                   plan_lora, read_lora, temporary_loras, unload_loras)
from .lora_keys import LoraLayer, check_lora_keys, detect_lora_format, layer_names, lora_layers
from .peft_config import peft_alpha, read_peft_config
from .prompt_tags import LoraTag, find_lora, prompt_loras, split_lora_tags
from .textual_inversion import check_embedding_file, load_textual_inversion, read_embedding, used_embeddings

__all__ = ["AppliedLora", "LoraLayer", "LoraTag", "a1111_lora_hash", "applied_loras", "check_embedding_file",
           "check_lora_keys", "detect_lora_format", "find_lora", "layer_names", "load_lora", "load_textual_inversion",
           "lora_delta", "lora_hash_list", "lora_hashes", "lora_layers", "peft_alpha", "plan_lora", "prompt_loras",
           "read_embedding", "read_lora", "read_peft_config", "split_lora_tags", "temporary_loras", "unload_loras",
           "used_embeddings"]

"""Adapters for a loaded Stable Diffusion model: LoRA files (:mod:`.lora`, formats in :mod:`.lora_keys`) and
textual-inversion embeddings (:mod:`.textual_inversion`)."""

from .lora import AppliedLora, applied_loras, load_lora, lora_delta, lora_hashes, plan_lora, read_lora, unload_loras
from .lora_keys import LoraLayer, detect_lora_format, layer_names, lora_layers
from .textual_inversion import load_textual_inversion, read_embedding

__all__ = ["AppliedLora", "LoraLayer", "applied_loras", "detect_lora_format", "layer_names", "load_lora", "lora_delta",
           "lora_hashes", "lora_layers", "plan_lora", "read_lora", "unload_loras", "load_textual_inversion", "read_embedding"]

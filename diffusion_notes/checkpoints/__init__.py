"""Checkpoint files: safe reading and writing, key conventions, and weight-layout conversions.

``io`` reads any safetensors or ``torch.save`` file without running code from it and writes
safetensors atomically (``safetensors_header`` reads and checks a safetensors header);
``key_layout`` names where an original single file keeps each network; ``openclip`` converts
OpenCLIP text towers (SD 2.x, SDXL) to and from the transformers CLIP layout; ``detect`` reads an original file's architecture from its shapes (and an
original YAML); ``single_file`` and ``diffusers_folder`` read and write whole models in the two
layouts, building networks with ``building``; ``tokenizers`` and ``hub`` find what single files lack;
``vae_file`` reads a standalone VAE (a CompVis file or a diffusers folder) for a VAE swap.
"""

from .io import CheckpointError, load_state_dict, save_state_dict
from .key_layout import pick_ema, split_by_prefix
from .openclip import openclip_text_config, openclip_to_transformers, transformers_to_openclip

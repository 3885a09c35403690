"""Training Stable Diffusion's three parts from scratch, small and readable.

* :mod:`.tokenizer`: a CLIP tokenizer (``vocab.json`` + ``merges.txt``) for a word list;
* :mod:`.autoencoder`: the KL-regularised autoencoder's loss and the latent scale factor;
* :mod:`.assemble`: a ``StableDiffusion`` from freshly built parts;
* :mod:`.latent_diffusion`: the training objective, LDM Eq. 2/3.

``diffusion_notes.mini_sd.train`` uses all four to train the miniature shipped with the package.
"""

from .assemble import assemble_stable_diffusion, build_text_encoder, zero_init_
from .autoencoder import measure_scale_factor, vae_loss
from .latent_diffusion import encode_latents, latent_diffusion_loss
from .tokenizer import build_word_tokenizer, write_word_tokenizer

__all__ = ["assemble_stable_diffusion", "build_text_encoder", "zero_init_", "measure_scale_factor", "vae_loss",
           "encode_latents", "latent_diffusion_loss", "build_word_tokenizer", "write_word_tokenizer"]

"""A miniature Stable Diffusion trained by this package on scikit-learn's digits (32x32, CPU minutes).

Same architecture family and code path as SD 1.x (``AutoencoderKL``, ``UNetModel``, a transformers
``CLIPTextModel`` and a CLIP tokenizer), small enough to train here and to run anywhere:

    from diffusion_notes.mini_sd import load_mini_sd
    sd = load_mini_sd()
    sd.txt2img("a handwritten seven", seed=0).images[0]

``python -m diffusion_notes train-mini-sd`` retrains it; ``MODEL_CARD.md`` says how it was made and
how good it is (judged by :mod:`.judge`).
"""

from .pretrained import MODEL_NAME, load_mini_sd, tokenizer_path, weights_path

__all__ = ["MODEL_NAME", "load_mini_sd", "tokenizer_path", "weights_path"]

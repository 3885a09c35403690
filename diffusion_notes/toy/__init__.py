"""A small class-conditional DDPM on scikit-learn's 8x8 digits, trained in minutes on a CPU.

* :mod:`.digits`: the data, scaled to [-1, 1], with a fixed train/test split.
* :mod:`.model`: the UNet :math:`\\epsilon_\\theta(x_t, t, c)`; label ``NULL_LABEL`` = unconditional.
* :mod:`.train`: DDPM Algorithm 1 with classifier-free label dropout (``python -m diffusion_notes train-toy``).
* :mod:`.judge`: an independent logistic-regression classifier that scores samples.
* :mod:`.pretrained`: the shipped weights (see ``MODEL_CARD.md``); :mod:`.demo`: samplers side by side.
"""

from .digits import load_split
from .model import NULL_LABEL, DigitsUNet, UNetConfig
from .pretrained import load_pretrained, load_pretrained_edm, load_pretrained_flow

__all__ = ["load_split", "NULL_LABEL", "DigitsUNet", "UNetConfig", "load_pretrained", "load_pretrained_flow", "load_pretrained_edm"]

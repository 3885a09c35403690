"""Sizes that many tensors of a single file share, checked before any is used to infer the architecture.

A single file states no configuration: the architecture is read from tensor shapes
(:mod:`~diffusion_notes.checkpoints.detect`). If the one tensor a size is read from were damaged, the
model built from it would be wrong and every *correct* tensor would then be blamed for not fitting.
So each size is read from all the tensors that carry it (the text encoder's width appears in every
layer norm, projection and embedding; the UNet's base width in its first and last convolutions and
its time embedding), the majority decides, and a tensor that disagrees with its siblings is
reported by name with its shape and the size its siblings agree on.
"""

from __future__ import annotations

import re
from collections import Counter

from ..errors import CheckpointError
from .key_layout import CLIP_KEYS as _CLIP
from .key_layout import OPENCLIP_KEYS as _OPEN
from .key_layout import UNET_KEYS as _U
from .key_layout import VAE_KEYS as _V

__all__ = ["SIBLING_SIZES", "check_sibling_sizes"]

#: (what the size is, the encoder prefix pattern it is grouped by, [(key pattern, dimension), ...]).
SIBLING_SIZES = [
    ("UNet base width", _U, [(r"input_blocks\.0\.0\.(?:weight|bias)", 0), (r"time_embed\.0\.weight", 1),
                             (r"out\.0\.(?:weight|bias)", 0), (r"out\.2\.weight", 1)]),
    ("UNet time-embedding width", _U, [(r"time_embed\.0\.(?:weight|bias)", 0), (r"time_embed\.2\.weight", 0),
                                       (r"time_embed\.2\.weight", 1), (r"time_embed\.2\.bias", 0),
                                       (r".*\.emb_layers\.1\.weight", 1)]),
    ("UNet context width", _U, [(r".*\.attn2\.to_[kv]\.weight", 1)]),
    ("UNet output channels", _U, [(r"out\.2\.(?:weight|bias)", 0)]),
    ("VAE base width", _V, [(r"encoder\.conv_in\.(?:weight|bias)", 0), (r"decoder\.conv_out\.weight", 1),
                            (r"decoder\.norm_out\.(?:weight|bias)", 0)]),
    ("VAE latent channels", _V, [(r"post_quant_conv\.weight", 0), (r"post_quant_conv\.weight", 1),
                                 (r"post_quant_conv\.bias", 0)]),
    ("text encoder width", _CLIP, [(r"embeddings\.token_embedding\.weight", 1),
                                   (r"embeddings\.position_embedding\.weight", 1),
                                   (r"final_layer_norm\.(?:weight|bias)", 0),
                                   (r"encoder\.layers\.\d+\.layer_norm[12]\.(?:weight|bias)", 0),
                                   (r"encoder\.layers\.\d+\.self_attn\.[qkv]_proj\.weight", 1),
                                   (r"encoder\.layers\.\d+\.self_attn\.out_proj\.weight", 0),
                                   (r"encoder\.layers\.\d+\.mlp\.fc1\.weight", 1),
                                   (r"encoder\.layers\.\d+\.mlp\.fc2\.weight", 0)]),
    ("text encoder MLP width", _CLIP, [(r"encoder\.layers\.\d+\.mlp\.fc1\.(?:weight|bias)", 0),
                                       (r"encoder\.layers\.\d+\.mlp\.fc2\.weight", 1)]),
    ("text encoder width", _OPEN, [(r"token_embedding\.weight", 1), (r"positional_embedding", 1),
                                   (r"ln_final\.(?:weight|bias)", 0),
                                   (r"transformer\.resblocks\.\d+\.ln_[12]\.(?:weight|bias)", 0),
                                   (r"transformer\.resblocks\.\d+\.attn\.in_proj_weight", 1),
                                   (r"transformer\.resblocks\.\d+\.attn\.out_proj\.weight", 0),
                                   (r"transformer\.resblocks\.\d+\.mlp\.c_fc\.weight", 1),
                                   (r"transformer\.resblocks\.\d+\.mlp\.c_proj\.weight", 0)]),
    ("text encoder MLP width", _OPEN, [(r"transformer\.resblocks\.\d+\.mlp\.c_fc\.(?:weight|bias)", 0),
                                       (r"transformer\.resblocks\.\d+\.mlp\.c_proj\.weight", 1)]),
]

_COMPILED = [(what, re.compile(rf"^({prefix})(?:{'|'.join(f'(?:{p})' for p, _ in members)})$"),
              [(re.compile(rf"^(?:{prefix})(?:{p})$"), dim) for p, dim in members]) for what, prefix, members in SIBLING_SIZES]


def check_sibling_sizes(state_dict: dict, source="checkpoint") -> None:
    """CheckpointError naming the tensor whose size disagrees with the tensors that must share it."""
    for what, group_pattern, members in _COMPILED:
        groups: dict[str, list[tuple[str, int, tuple]]] = {}
        for key, tensor in state_dict.items():
            match = group_pattern.match(key)
            if match is None or not hasattr(tensor, "shape"):
                continue
            for pattern, dim in members:
                if pattern.match(key) and len(tensor.shape) > dim:
                    groups.setdefault(match.group(1), []).append((key, int(tensor.shape[dim]), tuple(tensor.shape)))
        for entries in groups.values():
            counts = Counter(size for _, size, _ in entries)
            if len(counts) < 2:
                continue
            (size, n), (_, runner_up) = counts.most_common(2)
            odd = [(key, shape) for key, s, shape in entries if s != size]
            agreeing = next(key for key, s, _ in entries if s == size)
            if n == runner_up:
                raise CheckpointError(f"{source}: the {what} is ambiguous: {odd[0][0]} has shape {odd[0][1]} but "
                                      f"{agreeing} implies {size}; the file is damaged, download it again.")
            raise CheckpointError(f"{source}: tensor {odd[0][0]} has shape {odd[0][1]}, but {n} other tensors "
                                  f"(e.g. {agreeing}) agree on a {what} of {size}; that one tensor is damaged, "
                                  "download the file again.")

r"""Pictures in and out of the pipeline: PIL <-> tensors, grids, and PNGs that remember how they were made.

Conventions (the same as CompVis's scripts and diffusers' ``VaeImageProcessor``):

* the VAE reads and writes images as ``(B, 3, H, W)`` float tensors in :math:`[-1, 1]`;
* arrays for people are ``(B, H, W, 3)`` floats in :math:`[0, 1]` (diffusers ``output_type="np"``),
  and 8-bit pixels are ``round(255 * x)``;
* masks are 1 (white) where the picture is to be repainted and 0 (black) where it is kept, binarised
  at 0.5 (diffusers ``mask_processor``; CompVis ``inpaint.py``: ``mask[mask < 0.5] = 0``).

Generation parameters travel inside each PNG as a ``parameters`` tEXt chunk in the format of
AUTOMATIC1111's web UI, which many tools read back (:mod:`diffusion_notes.infotext`)::

    a photograph of an astronaut riding a horse
    Negative prompt: blurry
    Steps: 50, Sampler: PLMS, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: v1-5-pruned-emaonly
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np
import torch

from .errors import SettingsError
from .infotext import format_parameters, parse_parameters  # noqa: F401  (the PNG text lives in infotext)

__all__ = ["pil_to_tensor", "image_to_tensor", "mask_to_tensor", "check_image_and_mask", "tensor_to_array", "array_to_pil", "make_grid",
           "format_parameters", "parse_parameters", "save_png"]


#: PIL modes whose pixels are 16-bit (or wider) integers: scaled by 65535, not clipped at 255 by ``convert``.
_WIDE_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _pil_unit_array(image, channels: str) -> np.ndarray:
    """A PIL image as float32 in [0, 1]: ``(H, W, 3)`` for ``channels="RGB"``, ``(H, W)`` for ``"L"``.

    8-bit modes go through ``convert`` (palette, grey, CMYK, alpha dropped); 16-bit grey (``I;16``, and
    ``I`` as older Pillows open 16-bit PNGs) is divided by 65535; floating-point grey (``F``) is on
    Pillow's own 0..255 scale (what ``convert("F")`` gives). ``convert`` alone would clip every value
    above 255 to white: a 16-bit PNG would come out almost all white.
    """
    if image.mode in _WIDE_INTEGER_MODES or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 255.0 if image.mode == "F" else 65535.0
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > top:
            raise SettingsError("image", f"a {image.mode}-mode image must hold finite values in 0..{top:g}; save it "
                                "as an 8- or 16-bit PNG")
        values = (values / top).astype(np.float32)
        return np.repeat(values[..., None], 3, axis=-1) if channels == "RGB" else values
    try:
        if image.mode == "P":  # a palette (possibly with transparency): through RGBA, as Pillow advises
            image = image.convert("RGBA")
        return np.asarray(image.convert(channels), dtype=np.float32) / 255.0
    except ValueError as exc:  # e.g. LAB or HSV, which Pillow cannot convert
        raise SettingsError("image", f"cannot convert a {image.mode}-mode image to {channels} ({exc}); save it "
                            "as an RGB PNG") from None


def _open(value, option: str):
    """A PIL image from a PIL image or a path (str / PathLike); SettingsError naming ``option`` otherwise."""
    if isinstance(value, (str, os.PathLike)):
        from PIL import Image, UnidentifiedImageError

        path = Path(value)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist" if not path.exists() else "is not a regular file"
            raise SettingsError(option, f"{option} {str(path)!r} {what}; give a PNG/JPEG file or a PIL image")
        try:
            with Image.open(path) as image:
                image.load()
                return image.copy()
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            raise SettingsError(option, f"cannot read {option} {str(path)!r} as an image "
                                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return value


def _is_pil(value) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, Image.Image)


def pil_to_tensor(image) -> torch.Tensor:
    """A PIL image (any mode) -> ``(1, 3, H, W)`` float32 in [-1, 1] (CompVis ``load_img``: ``2 * x - 1``)."""
    pixels = _pil_unit_array(image, "RGB")
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None] * 2.0 - 1.0


def image_to_tensor(image, option: str = "image") -> torch.Tensor:
    """The pipeline's image input -> ``(1, 3, H, W)`` float32 in [-1, 1].

    Accepts a PIL image (any mode, see :func:`pil_to_tensor`), a path to one, or a tensor of shape
    ``(3, H, W)`` or ``(1, 3, H, W)`` with finite values in [-1, 1] (the VAE's range; CompVis
    ``load_img``). Anything else is a :class:`SettingsError` naming the expected shape and range.
    """
    image = _open(image, option)
    if _is_pil(image):
        if image.width == 0 or image.height == 0:
            raise SettingsError(option, f"the {option} is empty (0 pixels)")
        return pil_to_tensor(image)
    if not isinstance(image, torch.Tensor):
        raise SettingsError(option, f"{option} must be a PIL image, a path, or a (1, 3, H, W) tensor in [-1, 1]; "
                            f"got {type(image).__name__}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise SettingsError(option, f"{option} tensor must have shape (1, 3, H, W) or (3, H, W); got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise SettingsError(option, f"{option} tensor must be floating point in [-1, 1], got {image.dtype} "
                            "(for 8-bit pixels use x / 127.5 - 1)")
    image = image.float()
    if not torch.isfinite(image).all():
        raise SettingsError(option, f"{option} tensor holds NaN/inf; it must be finite values in [-1, 1]")
    low, high = float(image.min()), float(image.max())
    if low < -1 - 1e-3 or high > 1 + 1e-3:
        hint = " (it looks like 0..255: use x / 127.5 - 1)" if low >= 0 and high <= 255 else ""
        raise SettingsError(option, f"{option} tensor values must lie in [-1, 1]; got [{low:.3g}, {high:.3g}]{hint}")
    return image.clamp(-1, 1)


def mask_to_tensor(mask, option: str = "mask") -> torch.Tensor:
    """A mask (white = repaint) -> ``(1, 1, H, W)`` float32 of zeros and ones, binarised at 0.5.

    Accepts a PIL image (any mode; colour is converted to grey, 16-bit grey scaled by 65535, an alpha
    channel is ignored), a path to one, or a tensor in [0, 1] of shape ``(H, W)``, ``(1, H, W)`` or
    ``(1, 1, H, W)``.
    """
    mask = _open(mask, option)
    if _is_pil(mask):
        if mask.width == 0 or mask.height == 0:
            raise SettingsError(option, f"the {option} is empty (0 pixels)")
        values = torch.from_numpy(np.ascontiguousarray(_pil_unit_array(mask, "L")))[None, None]
        return (values >= 0.5).float()
    if not isinstance(mask, torch.Tensor):
        raise SettingsError(option, f"{option} must be a PIL image, a path, or an (H, W) / (1, 1, H, W) tensor in "
                            f"[0, 1]; got {type(mask).__name__}")
    shape = tuple(mask.shape)
    if mask.ndim not in (2, 3, 4) or any(n != 1 for n in shape[:-2]):
        raise SettingsError(option, f"{option} tensor must have shape (H, W), (1, H, W) or (1, 1, H, W); got {shape}")
    values = mask.float().reshape(1, 1, *shape[-2:])
    if not torch.isfinite(values).all():
        raise SettingsError(option, f"{option} tensor holds NaN/inf; it must be finite values in [0, 1]")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        raise SettingsError(option, f"{option} tensor values must lie in [0, 1] (1 = repaint); got [{low:.3g}, "
                            f"{high:.3g}]" + (" (0..255? divide by 255)" if high <= 255 and low >= 0 else ""))
    return (values >= 0.5).float()


def check_image_and_mask(image: torch.Tensor, mask: torch.Tensor) -> None:
    """SettingsError (``mask``) unless ``mask`` (from :func:`mask_to_tensor`) fits ``image`` (from
    :func:`image_to_tensor`) and marks something to repaint."""
    if image.shape[-2:] != mask.shape[-2:]:
        (h, w), (mh, mw) = image.shape[-2:], mask.shape[-2:]
        raise SettingsError("mask", f"the image is {w}x{h} but the mask is {mw}x{mh} (width x height); "
                            "they must be the same size")
    if not mask.any():
        raise SettingsError("mask", "the mask is black everywhere, so there is nothing to repaint; paint white (1) "
                            "where the image should change")


def tensor_to_array(images: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` in [-1, 1] -> ``(B, H, W, 3)`` float32 in [0, 1], clamped (diffusers ``postprocess``)."""
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu().numpy()


def array_to_pil(arrays: np.ndarray) -> list:
    """``(B, H, W, 3)`` floats in [0, 1] -> PIL images (diffusers ``numpy_to_pil``: ``round(255 x)``)."""
    from PIL import Image

    # NaN only reaches here when asked for (non_finite="warn"): it becomes 0, explicitly, not by a cast
    return [Image.fromarray((np.nan_to_num(a, nan=0.0) * 255.0).round().astype(np.uint8)) for a in arrays]


def make_grid(images: list, n_rows: int, padding: int = 2):
    """Paste equal-sized PIL images into ``n_rows`` rows with ``padding`` black pixels between and around
    them, as ``torchvision.utils.make_grid`` does in CompVis's ``txt2img.py`` (one row per iteration)."""
    from PIL import Image

    n_cols = -(-len(images) // n_rows)
    width, height = images[0].size
    grid = Image.new("RGB", (n_cols * (width + padding) + padding, n_rows * (height + padding) + padding))
    for index, image in enumerate(images):
        row, col = divmod(index, n_cols)
        grid.paste(image, (padding + col * (width + padding), padding + row * (height + padding)))
    return grid


def save_png(image, path, parameters: str | None = None) -> Path:
    """Write ``image`` to ``path`` with a ``parameters`` tEXt chunk; never replaces an existing file and
    never leaves a partial one.

    The bytes go to a fresh hidden name in the same folder; only the complete file is then hard-linked
    to ``path`` (``os.link`` fails if ``path`` exists, so even two runs racing for the same number
    cannot overwrite each other's pictures) and the hidden name removed. An interruption (Ctrl-C)
    at any point leaves either the whole picture or nothing. The file is created as ``open(path, "xb")``
    would create it: readable by others as the user's umask allows (0644 under umask 022), not 0600 as
    ``tempfile.mkstemp`` would make it.
    """
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    path = Path(path)
    while True:
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(6)}.png.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path

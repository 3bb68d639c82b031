"""Decoding one image (a file or an array) to an HxWx3 ``uint8`` RGB array.

Conversion rules, applied after EXIF orientation:

* Greyscale (``L``, ``1``) and palette (``P``) images are expanded to RGB.
* Transparency (``LA``, ``RGBA``, ``PA``, ``P`` with a transparent colour) is composited onto
  a white background, so transparent regions look like blank paper rather than whatever
  colour the encoder left under them.
* 16-bit integer images (``I;16`` variants, and ``I`` whose values fit in 0-65535) are
  scaled linearly from 0-65535 to 0-255 with rounding, not clipped. Other ``I`` images and
  float (``F``) images outside 0-1 are min-max stretched to 0-255; ``F`` images within 0-1
  are multiplied by 255.
* ``CMYK``, ``YCbCr`` and other modes go through Pillow's ``convert("RGB")``.
* Arrays: HxW and HxWx1 are repeated to three channels; HxWx4 is treated as RGBA.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from tlkit.data.splits import Item
from tlkit.errors import TlkitError

__all__ = ["load_image", "probe_image"]

_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})


def load_image(item: Item) -> np.ndarray:
    """Decode ``item`` to an RGB array.

    Args:
        item: A file path, or an HxW / HxWxC ``uint8`` array (C in 1, 3, 4).

    Returns:
        A C-contiguous HxWx3 ``uint8`` array.

    Raises:
        TlkitError: If the file is missing or cannot be decoded, or the array has an
            unsupported shape or dtype; the message names the path.
    """
    if isinstance(item, np.ndarray):
        return _array_to_rgb(item)
    path = os.fspath(item)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on damaged files; the result decides
            with Image.open(path) as im:
                im.load()
                im = _exif_transpose(im)
                return _pil_to_rgb(im)
    except FileNotFoundError:
        raise TlkitError(f"image '{path}' not found; check the path or reload the data") from None
    except TlkitError:
        raise
    except Exception as err:  # Pillow plugins raise many exception types on bad data
        raise TlkitError(
            f"cannot decode image '{path}' ({_reason(err)}); replace or remove the file"
        ) from None


def probe_image(path: str | os.PathLike[str]) -> str | None:
    """Check whether ``path`` decodes, without keeping the pixels.

    Runs Pillow's ``verify()`` and then a real decode (JPEGs at 1/8 scale, which still reads
    the whole compressed stream), so truncated files of every format are caught here rather
    than in the middle of training: a file that passes decodes with :func:`load_image`.

    Args:
        path: The image file.

    Returns:
        ``None`` if the file decodes, otherwise a short reason such as ``"empty file"``.
    """
    p = os.fspath(path)
    try:
        if os.path.getsize(p) == 0:
            return "empty file"
    except OSError:
        return "file not found"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on damaged files; the result decides
            with Image.open(p) as im:
                im.verify()
            with Image.open(p) as im:
                if im.format == "JPEG":
                    im.draft("RGB", (1, 1))
                im.load()
                _pil_to_rgb(_exif_transpose(im))
    except Exception as err:  # Pillow plugins raise many exception types on bad data
        return _reason(err)
    return None


def _reason(err: BaseException) -> str:
    if isinstance(err, Image.UnidentifiedImageError):
        return "not a recognised image format"
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:160]


def _exif_transpose(im: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block must not make the image unusable
        return im
    return im if out is None else out


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    if mode == "P" and "transparency" in im.info:
        mode, im = "RGBA", im.convert("RGBA")
    if mode in _ALPHA_MODES:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
        return _composite_on_white(rgba)
    if mode.startswith("I;16"):
        values = np.asarray(im).astype(np.float64)
        return _grey_to_rgb(np.rint(values / 257.0))
    if mode == "I":
        values = np.asarray(im).astype(np.float64)
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return _grey_to_rgb(np.rint(values / 257.0))
        return _grey_to_rgb(_stretch(values))
    if mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            return _grey_to_rgb(np.rint(np.clip(values, 0.0, 1.0) * 255.0))
        return _grey_to_rgb(_stretch(values))
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _stretch(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape)
    lo, hi = values[finite].min(), values[finite].max()
    clipped = np.clip(np.where(finite, values, lo), lo, hi)
    if hi <= lo:
        return np.zeros(values.shape)
    return np.rint((clipped - lo) * (255.0 / (hi - lo)))


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    g = np.clip(grey, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return np.ascontiguousarray(out.astype(np.uint8))


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise TlkitError(
            f"image array has dtype {arr.dtype}, expected uint8; convert the data to uint8"
        )
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if arr.ndim == 3 and arr.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(arr, 3, axis=2))
    if arr.ndim == 3 and arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return _composite_on_white(arr)
    raise TlkitError(
        f"image array has shape {arr.shape}, expected HxW or HxWxC with C in 1, 3, 4; "
        "reshape the data"
    )

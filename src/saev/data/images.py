"""Decoding images robustly into RGB: every mode Pillow reads, with clear reasons for what it cannot."""

import os
import stat
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from saev.errors import ImageError
from saev.fileio import kind

MIN_SIDE = 8
"""Images smaller than this (in either side) carry no usable patches and are skipped."""


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open, fully decode and convert an image to RGB, or raise ImageError with the reason."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as err:  # e.g. a symlink to itself
        raise ImageError(f"{path}: cannot open ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        # Opening a FIFO waits for a writer forever, and reading a device never ends.
        raise ImageError(f"{path}: {kind(mode)}, not an image file")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its pixel limit and twice that; treat both as a bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                rgb = to_rgb(img)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can identify") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{path}: over Pillow's decompression-bomb limit ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: truncated or corrupt ({err})") from None
    if min(rgb.size) < MIN_SIDE:
        raise ImageError(f"{path}: too small ({rgb.width}x{rgb.height} px; minimum side {MIN_SIDE} px)")
    return rgb


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited over white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _high_depth_to_rgb(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale: rescale to 0-255 by the type's range."""
    arr = np.asarray(img)
    if img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
    else:
        scaled = arr.astype(np.float64) / (65535 if arr.max(initial=0) <= 65535 else arr.max()) * 255
    return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), "L").convert("RGB")

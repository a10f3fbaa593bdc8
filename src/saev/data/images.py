"""Decoding images robustly into RGB (every mode Pillow reads, with clear reasons for what it
cannot), and the one loader that decodes, transforms and batches them for a ViT."""

import dataclasses
import os
import pathlib
import stat
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image, UnidentifiedImageError
from torch import Tensor

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


# The loader


@runtime_checkable
class Images(Protocol):
    """What the loader decodes: an image source (`saev.data.sources`) or `ImageFiles`."""

    def load(self, i: int) -> Image.Image:
        """RGB image i; raises ImageError when it cannot be decoded."""


@dataclasses.dataclass(frozen=True)
class ImageFiles:
    """Image files by index, decoded with `load_rgb`."""

    paths: tuple[pathlib.Path, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> Image.Image:
        return load_rgb(self.paths[i])


@dataclasses.dataclass(frozen=True)
class Decoded:
    """One image through the loader: its tensor, or why it has none."""

    index: int
    x_3HW: Float[Tensor, "3 height width"] | None = None
    image: Image.Image | None = None
    """The decoded pixels, when the loader was asked to keep them."""
    unreadable: str | None = None
    """Why it could not be decoded: the ImageError's message (which names the image)."""
    unprocessable: str | None = None
    """Why it could not be preprocessed: the exception's type and message (naming no image)."""


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Consecutive indices through the loader, in order."""

    items: list[Decoded]

    @property
    def readable(self) -> list[Decoded]:
        return [d for d in self.items if d.x_3HW is not None]

    @property
    def failed(self) -> list[Decoded]:
        return [d for d in self.items if d.x_3HW is None]

    @property
    def images(self) -> list[Image.Image]:
        """The readable images' pixels (empty unless the loader kept them)."""
        return [d.image for d in self.readable if d.image is not None]

    def stack(self) -> Float[Tensor, "batch 3 height width"]:
        return torch.stack([d.x_3HW for d in self.items if d.x_3HW is not None])


class _Decode(torch.utils.data.Dataset[Decoded]):
    """Image `indices[j]` decoded and transformed; failures become reasons."""

    def __init__(
        self,
        images: Images,
        transform: Callable[[Image.Image], Tensor],
        indices: range,
        keep_images: bool,
        skip_unprocessable: bool,
    ):
        self.images, self.transform, self.indices = images, transform, indices
        self.keep_images, self.skip_unprocessable = keep_images, skip_unprocessable

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> Decoded:
        i = self.indices[j]
        try:
            img = self.images.load(i)
            return Decoded(i, self.transform(img), img if self.keep_images else None)
        except ImageError as err:
            return Decoded(i, unreadable=str(err))
        except Exception as err:  # a transform failing on an odd image must not stop a long run
            if not self.skip_unprocessable:
                raise
            return Decoded(i, unprocessable=f"{type(err).__name__}: {err}")


def decode_batches(
    images: Images,
    transform: Callable[[Image.Image], Tensor],
    indices: range,
    batch_size: int,
    *,
    n_workers: int = 0,
    keep_images: bool = False,
    skip_unprocessable: bool = True,
) -> Iterable[Chunk]:
    """The images at `indices` decoded and transformed, `batch_size` consecutive indices a chunk, in
    order: in `n_workers` processes of one thread each (the forward pass keeps the other cores), or
    here when 0. An image that cannot be decoded comes back with its reason, and so does one the
    transform fails on, unless `skip_unprocessable` is False: then the transform's error propagates."""
    return torch.utils.data.DataLoader(
        _Decode(images, transform, indices, keep_images, skip_unprocessable),
        batch_size=batch_size,
        num_workers=n_workers,
        collate_fn=Chunk,
        pin_memory=False,
        worker_init_fn=_single_thread if n_workers else None,
        persistent_workers=False,
        # Iterating draws the workers' seed; from the global generator it would shift callers' random numbers.
        generator=torch.Generator(),
    )


def default_workers() -> int:
    """Decoding competes with a CPU forward pass for cores; leave it two of them."""
    return max(0, min(4, (os.cpu_count() or 1) - 2))


def _single_thread(_: int) -> None:
    torch.set_num_threads(1)


def none_readable(n_images: int, reasons: Sequence[str]) -> str:
    """Why a command that read none of its images stops, with the first reasons."""
    more = f" (and {len(reasons) - 5} more)" if len(reasons) > 5 else ""
    return f"none of the {n_images} image(s) could be read: {'; '.join(reasons[:5])}{more}."

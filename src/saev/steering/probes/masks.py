"""Segmentation masks to patch labels.

A mask holds integer labels (mode L, I or P; a P image's palette indices are the labels). Each mask
goes through the family transform's geometric PIL steps (what `visible_crop` applies to the image)
with nearest-neighbour resampling, and each patch takes the most frequent pixel label of its
pixels (ties to the smallest label); patches whose label is the ignore label are left out of
training and scoring.
"""

import copy
import dataclasses
import enum
import pathlib
import warnings
from typing import Any

import numpy as np
from jaxtyping import Int
from PIL import Image, UnidentifiedImageError

from saev.activations.families.base import Transform
from saev.errors import ConfigError

MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")
"""Single-channel Pillow modes whose pixel values are read as integer labels."""
_MAX_LABEL = 2**24 - 1


def check_mask_header(path: pathlib.Path) -> tuple[int, int]:
    """(width, height) of a label mask, from its header; ConfigError when it is not one."""
    try:
        with Image.open(path) as img:
            mode, size = img.mode, img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise ConfigError(f"{path}: mask is not an image Pillow can read ({err}).") from None
    if mode not in MASK_MODES:
        raise ConfigError(
            f"{path}: mask has mode {mode}; a label mask is single-channel (mode L, I or P) with one "
            "integer label per pixel."
        )
    return size


def read_mask(path: pathlib.Path) -> Int[np.ndarray, "height width"]:
    """A label mask as int64 values; ConfigError naming the file when it is not one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                mode = img.mode
                arr = np.asarray(img)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such mask file.") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ConfigError(f"{path}: mask is not an image Pillow can read ({err}).") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ConfigError(f"{path}: mask is truncated or corrupt ({err}).") from None
    if mode not in MASK_MODES or arr.ndim != 2:
        raise ConfigError(
            f"{path}: mask has mode {mode}; a label mask is single-channel (mode L, I or P) with one "
            "integer label per pixel."
        )
    labels = arr.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > _MAX_LABEL):
        raise ConfigError(
            f"{path}: mask labels must lie in 0..{_MAX_LABEL}, found {labels.min()}..{labels.max()}."
        )
    return labels


def _nearest_value(value: Any) -> Any:
    """Nearest-neighbour resampling in the type a step stores its resampling in."""
    if isinstance(value, enum.Enum) and isinstance(value.value, str):  # torchvision InterpolationMode
        return type(value)("nearest")
    if isinstance(value, str):
        return "nearest"
    if isinstance(value, Image.Resampling):
        return Image.Resampling.NEAREST
    return int(Image.Resampling.NEAREST)


def nearest_step(step: Any) -> Any:
    """`step` with its resampling (an `interpolation` or `resample` attribute) set to nearest."""
    for attr in ("interpolation", "resample"):
        if hasattr(step, attr) and not callable(getattr(step, attr)):
            nearest = _nearest_value(getattr(step, attr))
            if dataclasses.is_dataclass(step) and not isinstance(step, type):
                return dataclasses.replace(step, **{attr: nearest})
            clone = copy.copy(step)
            setattr(clone, attr, nearest)
            return clone
    return step


def mask_crop(
    img_transform: Transform, mask_HW: Int[np.ndarray, "height width"]
) -> Int[np.ndarray, "crop_height crop_width"]:
    """The mask's pixels behind the model's crop: the transform's leading PIL steps (those of
    `visible_crop`), each with nearest-neighbour resampling.

    Labels travel as 24-bit RGB pixels, so colour conversions in the transform leave them intact.
    """
    rgb = np.stack([(mask_HW >> shift) & 255 for shift in (0, 8, 16)], axis=-1).astype(np.uint8)
    out = Image.fromarray(rgb)
    for step in getattr(img_transform, "transforms", [img_transform]):
        nxt = nearest_step(step)(out)
        if not isinstance(nxt, Image.Image):
            break
        out = nxt
    arr = np.asarray(out.convert("RGB")).astype(np.int64)
    crop = arr[..., 0] | (arr[..., 1] << 8) | (arr[..., 2] << 16)
    if not np.isin(np.unique(crop), np.unique(mask_HW)).all():
        raise ConfigError(
            "the ViT's preprocessing changes mask labels even with nearest-neighbour resampling (a "
            "resampling step without an `interpolation` or `resample` setting, or padding)."
        )
    return crop


def patch_majority(
    crop_HW: Int[np.ndarray, "crop_height crop_width"], grid: tuple[int, int]
) -> Int[np.ndarray, " patches"]:
    """Each patch's most frequent label (ties to the smallest), patches in row-major order."""
    rows, cols = grid
    height, width = crop_HW.shape
    if height % rows or width % cols:
        raise ConfigError(f"a {rows}x{cols} patch grid does not tile the model's {height}x{width}-px crop.")
    ph, pw = height // rows, width // cols
    patches_PK = crop_HW.reshape(rows, ph, cols, pw).transpose(0, 2, 1, 3).reshape(rows * cols, ph * pw)
    values, inverse = np.unique(patches_PK, return_inverse=True)
    n_patches, n_values = rows * cols, len(values)
    cells = np.arange(n_patches)[:, None] * n_values + inverse.reshape(patches_PK.shape)
    counts_PU = np.bincount(cells.reshape(-1), minlength=n_patches * n_values).reshape(n_patches, n_values)
    # argmax takes the first maximum: values are sorted, so ties go to the smallest label.
    return values[counts_PU.argmax(axis=1)]


def mask_patch_labels(
    img_transform: Transform, path: pathlib.Path, grid: tuple[int, int]
) -> Int[np.ndarray, " patches"]:
    return patch_majority(mask_crop(img_transform, read_mask(path)), grid)


def check_segmentation_classes(
    labels_N: Int[np.ndarray, " n"],
    ignore_label: int,
    class_names: tuple[str, ...] | None,
    where: pathlib.Path,
) -> None:
    """ConfigError unless the labels hold at least two classes besides the ignore label, each named
    in `class_names` when given."""
    present = sorted(int(v) for v in np.unique(labels_N) if v != ignore_label)
    if class_names is not None:
        unnamed = [v for v in present if v >= len(class_names)]
        if unnamed:
            raise ConfigError(
                f"{where}: mask label(s) {unnamed[:5]} have no name in --class-names "
                f"({len(class_names)} names for labels 0..{len(class_names) - 1})."
            )
    if len(present) < 2:
        raise ConfigError(
            f"{where}: a segmentation probe needs at least two classes among the patch labels (found "
            f"{present or 'none'}, ignore label {ignore_label})."
        )

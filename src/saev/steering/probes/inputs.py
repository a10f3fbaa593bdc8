"""The images (and masks) a probe reads, checked cheaply (mask headers only) before the ViT runs.

Classification: `images/<class>/...` (first-level subfolder = class, as `saev.data.sources`);
images directly in the root folder have no class and are skipped with a warning.

Segmentation: `masks/` mirrors `images/` (pairs matched by relative path without extension).
"""

import dataclasses
import logging
import os
import pathlib

from PIL import Image, UnidentifiedImageError

from saev.data.sources import scan_folder
from saev.errors import ConfigError
from saev.fileio import read_text
from saev.steering.probes.config import ProbeConfig
from saev.steering.probes.masks import check_mask_header

logger = logging.getLogger("saev.probe")


@dataclasses.dataclass(frozen=True)
class Inputs:
    images: tuple[str, ...]
    """Relative to cfg.images; classification: only those in a class folder."""
    masks: tuple[str, ...] | None
    """Segmentation: the mask of each image, relative to cfg.masks."""
    class_names: tuple[str, ...] | None


def gather_inputs(cfg: ProbeConfig) -> Inputs:
    """The images (and masks) to read, checked cheaply (mask headers only)."""
    source = scan_folder(cfg.images)
    if cfg.masks is None:
        labelled = tuple(f for f in source.files if "/" in f)
        if len(labelled) < len(source.files):
            logger.warning(
                "skipped %d image(s) directly in %s: only images in a class subfolder have a class",
                len(source.files) - len(labelled),
                source.root,
            )
        classes = sorted({f.split("/", 1)[0] for f in labelled})
        if len(classes) < 2:
            found = f"only {classes[0]!r}" if classes else "none"
            raise ConfigError(
                f"{source.root}: a classification probe needs at least two class subfolders with images "
                f"(found {found})."
            )
        if len(labelled) < 2:
            raise ConfigError(f"{source.root}: needs at least two images for a validation split.")
        return Inputs(labelled, None, None)
    masks_source = scan_folder(cfg.masks)
    by_stem: dict[str, str] = {}
    for rel in masks_source.files:
        stem = os.path.splitext(rel)[0]
        if stem in by_stem:
            raise ConfigError(f"{masks_source.root}: two masks for {stem}: {by_stem[stem]} and {rel}.")
        by_stem[stem] = rel
    missing = [f for f in source.files if os.path.splitext(f)[0] not in by_stem]
    if missing:
        raise ConfigError(
            f"{masks_source.root}: no mask for {len(missing)} of {len(source.files)} image(s) of "
            f"{source.root} (e.g. {', '.join(missing[:3])}); masks are matched by relative path without "
            "extension."
        )
    masks = tuple(by_stem[os.path.splitext(f)[0]] for f in source.files)
    other_shape = []
    for img, mask in zip(source.files, masks, strict=True):
        (mw, mh), size = check_mask_header(masks_source.root / mask), _image_size(source.root / img)
        if size is not None and abs(size[0] * mh - size[1] * mw) > 0.01 * size[0] * mh:
            other_shape.append(f"{img} ({size[0]}x{size[1]} px) and {mask} ({mw}x{mh} px)")
    if other_shape:
        logger.warning(
            "%d mask(s) have another aspect ratio than their image, so the model's crop covers other "
            "pixels of each (e.g. %s)",
            len(other_shape),
            other_shape[0],
        )
    if len(source.files) < 2:
        raise ConfigError(f"{source.root}: needs at least two images for a validation split.")
    return Inputs(source.files, masks, read_class_names(cfg.class_names))


def _image_size(path: pathlib.Path) -> tuple[int, int] | None:
    """(width, height) from the header, or None when unreadable (the feature pass skips it)."""
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        return None


def read_class_names(path: pathlib.Path | None) -> tuple[str, ...] | None:
    if path is None:
        return None
    names = tuple(line.strip() for line in read_text(path, "class-name file").splitlines())
    while names and not names[-1]:
        names = names[:-1]
    if len(names) < 2:
        raise ConfigError(f"{path}: needs at least two class names, one per line (line i names label i).")
    if not all(names):
        raise ConfigError(f"{path}: line {names.index('') + 1} is empty; line i names label i.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"{path}: class names {repeated} appear on several lines; each label needs its own."
        )
    return names

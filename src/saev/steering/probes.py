"""Training linear probes on a ViT's final tokens (`Vit.features`): classification of labelled
image folders, segmentation from label masks.

Features are computed once, in one batched pass, and cached in the output folder under a hash of
the model, the task, the pooling and the image (and mask) files with their sizes and mtimes, so
that a rerun trains from the cache. A grid of learning rates x weight decays is trained in one pass
over the cached features: the G heads' weights are one [G, D, C] tensor, every mini-batch steps
all of them (AdamW, cross-entropy, on standardised features), and the head with the best
validation accuracy is kept, its standardisation folded into its weight and bias so that it reads
raw `Vit.features` output.

Classification: `images/<class>/...` (first-level subfolder = class, as `saev.data.sources`);
images directly in the root folder have no class and are skipped with a warning.

Segmentation: `masks/` mirrors `images/` (pairs matched by relative path without extension); a
mask holds integer labels (mode L, I or P; a P image's palette indices are the labels). Each mask
goes through the family transform's geometric PIL steps (what `visible_crop` applies to the image)
with nearest-neighbour resampling, and each patch takes the most frequent pixel label of its
pixels (ties to the smallest label); patches whose label is the ignore label are left out of
training and scoring.
"""

import copy
import dataclasses
import enum
import hashlib
import json
import logging
import math
import os
import pathlib
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import tqdm
from jaxtyping import Float, Int
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from saev.activations.families import FamilyName, make_img_transform, make_vit
from saev.activations.families.base import Transform
from saev.activations.recording import default_workers
from saev.activations.vit import Vit
from saev.data.images import load_rgb
from saev.data.sources import scan_folder
from saev.errors import ConfigError, ImageError
from saev.fileio import OutputFolder, atomic_open, existing_kind, read_input, read_text
from saev.steering.probe_format import LinearProbe, Pool, Task, save_probe

logger = logging.getLogger("saev.probe")

FEATURES_FORMAT = "saev-probe-features/1"
DEFAULT_LRS = (1e-3, 3e-3, 1e-2)
DEFAULT_WEIGHT_DECAYS = (0.0, 1e-4, 1e-2)
MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")
"""Single-channel Pillow modes whose pixel values are read as integer labels."""
_MAX_LABEL = 2**24 - 1
# Rows of features scored at once when evaluating every head on a split.
_EVAL_CHUNK = 16384


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Train a linear probe on a ViT's final tokens: image classification from a labelled folder,
    or patch segmentation from label masks (--masks)."""

    vit_family: FamilyName
    """ViT family (see saev.activations.families)."""
    vit_ckpt: str
    """ViT checkpoint, named as its family expects (e.g. shapes-vit for builtin)."""
    images: pathlib.Path
    """Image folder. Classification: first-level subfolders are the classes (images directly in the folder have no class and are skipped with a warning). Segmentation: any tree mirrored by --masks."""
    out: OutputFolder
    """Output folder: probe.safetensors and the cached features."""
    masks: pathlib.Path | None = None
    """Segmentation: folder of label masks mirroring --images (same relative path, any image extension); single-channel PNGs of integer labels (mode L, I or P)."""
    pool: Pool | None = None
    """Classification: read the final [CLS] token (cls) or the mean of the patch tokens (mean); default cls when the model has a [CLS] token, else mean."""
    class_names: pathlib.Path | None = None
    """Segmentation: class names, one per line, line i naming label i (default: the label values present)."""
    ignore_label: int = 255
    """Segmentation: mask value of pixels without a class; patches where it is the most frequent value are left out."""
    lrs: tuple[float, ...] = DEFAULT_LRS
    """Learning rates tried (each with every weight decay)."""
    weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS
    """AdamW weight decays tried (each with every learning rate)."""
    epochs: int = 100
    """Passes over the training examples."""
    batch_size: int = 256
    """Training examples (images, or patches for segmentation) per optimiser step."""
    val_fraction: float = 0.2
    """Fraction of the images held out for validation (split by image, stratified by class for classification)."""
    seed: int = 0
    """Seed of the validation split and of the mini-batch order."""
    vit_batch_size: int = 32
    """Images per ViT forward pass while computing features."""
    device: str = "cpu"
    """Torch device, e.g. cpu or cuda."""

    @property
    def task(self) -> Task:
        return "classification" if self.masks is None else "segmentation"


@dataclasses.dataclass(frozen=True)
class Features:
    """What a ViT pass over the images produced (what the cache holds)."""

    features_ND: Float[Tensor, "n d_vit"]
    """Classification: one row per kept image; segmentation: every patch of every kept image, image by image."""
    patch_labels_IP: Int[Tensor, "images patches"] | None
    """Segmentation: each kept image's patch labels (raw mask values, ignore label included)."""
    images: tuple[str, ...]
    """The kept images, relative to the image folder."""
    skipped: dict[str, str]
    """Unreadable image -> reason."""
    pool: Pool
    grid: tuple[int, int]
    n_prefix: int


@dataclasses.dataclass(frozen=True)
class Examples:
    """Training examples: a feature vector, a class index and the image it comes from."""

    x_ND: Float[Tensor, "n d_vit"]
    y_N: Int[Tensor, " n"]
    image_N: Int[Tensor, " n"]
    classes: tuple[str, ...]
    n_images: int


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    path: pathlib.Path
    """The saved probe."""
    probe: LinearProbe
    cache: pathlib.Path
    """The feature cache it was trained from."""
    reused_cache: bool
    skipped: dict[str, str]
    """Unreadable image -> reason."""


# Inputs


@dataclasses.dataclass(frozen=True)
class _Inputs:
    images: tuple[str, ...]
    """Relative to cfg.images; classification: only those in a class folder."""
    masks: tuple[str, ...] | None
    """Segmentation: the mask of each image, relative to cfg.masks."""
    class_names: tuple[str, ...] | None


def check_options(cfg: ProbeConfig) -> None:
    """Refuse absurd options before any work."""
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {cfg.epochs}.")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {cfg.batch_size}.")
    if cfg.vit_batch_size < 1:
        raise ConfigError(f"--vit-batch-size must be at least 1, got {cfg.vit_batch_size}.")
    if not cfg.lrs or any(not (math.isfinite(lr) and lr > 0) for lr in cfg.lrs):
        raise ConfigError(f"--lrs must be one or more positive learning rates, got {list(cfg.lrs)}.")
    if not cfg.weight_decays or any(not (math.isfinite(wd) and wd >= 0) for wd in cfg.weight_decays):
        raise ConfigError(
            f"--weight-decays must be one or more non-negative values, got {list(cfg.weight_decays)}."
        )
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"--val-fraction must lie strictly between 0 and 1, got {cfg.val_fraction}.")
    if cfg.masks is None and cfg.class_names is not None:
        raise ConfigError("--class-names names mask labels; it needs --masks (segmentation).")
    if cfg.masks is not None and cfg.pool is not None:
        raise ConfigError("--pool applies to classification; a segmentation probe reads every patch.")
    if cfg.out.exists() and not cfg.out.is_dir():
        raise ConfigError(f"--out {cfg.out}: exists and is not a folder.")
    try:
        device = torch.device(cfg.device)
    except RuntimeError as err:
        raise ConfigError(f"--device {cfg.device!r}: not a torch device ({err}).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device}: CUDA is not available on this machine.")


def gather_inputs(cfg: ProbeConfig) -> _Inputs:
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
        return _Inputs(labelled, None, None)
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
        (mw, mh), size = _check_mask_header(masks_source.root / mask), _image_size(source.root / img)
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
    return _Inputs(source.files, masks, read_class_names(cfg.class_names))


def _image_size(path: pathlib.Path) -> tuple[int, int] | None:
    """(width, height) from the header, or None when unreadable (the feature pass skips it)."""
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        return None


def _check_mask_header(path: pathlib.Path) -> tuple[int, int]:
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


def cache_key(cfg: ProbeConfig, inputs: _Inputs) -> str:
    """Hash of what the features depend on: model, task, pooling, and every file with its size and mtime."""

    def stamp(root: pathlib.Path, files: tuple[str, ...]) -> list[Any]:
        out = []
        for rel in files:
            try:
                st = os.stat(root / rel)
            except OSError as err:
                raise ConfigError(f"{root / rel}: cannot read ({err.strerror}).") from None
            out.append([rel, st.st_size, st.st_mtime_ns])
        return out

    key: dict[str, Any] = {
        "format": FEATURES_FORMAT,
        "vit_family": cfg.vit_family,
        "vit_ckpt": cfg.vit_ckpt,
        "task": cfg.task,
        "pool": (cfg.pool or "auto") if cfg.task == "classification" else None,
        "images_root": str(cfg.images.expanduser().resolve()),
        "images": stamp(cfg.images, inputs.images),
    }
    if cfg.masks is not None and inputs.masks is not None:
        key["masks_root"] = str(cfg.masks.expanduser().resolve())
        key["masks"] = stamp(cfg.masks, inputs.masks)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


# Masks -> patch labels


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


# Features


class _Decoded(torch.utils.data.Dataset):
    """Images decoded and transformed (in worker processes); failures become reasons."""

    def __init__(self, root: pathlib.Path, files: tuple[str, ...], transform: Transform):
        self.root, self.files, self.transform = root, files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str | None]:
        try:
            return i, self.transform(load_rgb(self.root / self.files[i])), None
        except ImageError as err:
            return i, None, str(err)
        except Exception as err:  # a transform failing on an odd image must not stop the run
            return i, None, f"{self.root / self.files[i]}: cannot preprocess ({type(err).__name__}: {err})"


def _identity(items: list) -> list:
    return items


def _single_thread(_: int) -> None:
    torch.set_num_threads(1)


def compute_features(
    vit: Vit,
    img_transform: Transform,
    root: pathlib.Path,
    files: tuple[str, ...],
    task: Task,
    pool: Pool,
    batch_size: int,
    device: str,
) -> tuple[Tensor, list[int], dict[str, str]]:
    """Final features of every readable image: [kept, d_vit] (classification, pooled) or
    [kept, patches, d_vit] (segmentation); the kept images' indices; unreadable image -> reason."""
    n_prefix, n_patches = vit.layout.n_prefix, vit.layout.n_patches
    workers = default_workers()
    loader = torch.utils.data.DataLoader(
        _Decoded(root, files, img_transform),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_identity,
        worker_init_fn=_single_thread if workers else None,
        persistent_workers=False,
    )
    chunks: list[Tensor] = []
    kept: list[int] = []
    skipped: dict[str, str] = {}
    bar = tqdm.tqdm(total=len(files), unit="img", desc="probe features", dynamic_ncols=True)
    with torch.inference_mode():
        for items in loader:
            batch = []
            for i, x, err in items:
                if err is None:
                    batch.append((i, x))
                else:
                    logger.warning("skipped %s", err)
                    skipped[files[i]] = err
            if batch:
                x_B3HW = torch.stack([x for _, x in batch]).to(device)
                feats_BTD = vit.features(vit.run_to(x_B3HW, -1))
                if feats_BTD.shape[1] != n_prefix + n_patches:
                    raise ConfigError(
                        f"{vit.name} made {feats_BTD.shape[1]} tokens, not {n_prefix} + {n_patches} patches; "
                        "use images from the family's transform."
                    )
                if task == "segmentation":
                    chunks.append(feats_BTD[:, n_prefix:].float().cpu())
                elif pool == "cls":
                    chunks.append(feats_BTD[:, 0].float().cpu())
                else:
                    chunks.append(feats_BTD[:, n_prefix:].mean(1).float().cpu())
                kept += [i for i, _ in batch]
            bar.update(len(items))
    bar.close()
    if not chunks:
        reasons = list(skipped.values())
        more = f" (and {len(reasons) - 5} more)" if len(reasons) > 5 else ""
        raise ImageError(
            f"{root}: none of the {len(files)} image(s) could be read: {'; '.join(reasons[:5])}{more}."
        )
    return torch.cat(chunks), kept, skipped


def save_features(path: pathlib.Path, key: str, feats: Features) -> None:
    tensors = {"features": feats.features_ND.contiguous()}
    if feats.patch_labels_IP is not None:
        tensors["patch_labels"] = feats.patch_labels_IP.contiguous()
    meta = {
        "images": list(feats.images),
        "skipped": feats.skipped,
        "pool": feats.pool,
        "grid": list(feats.grid),
        "n_prefix": feats.n_prefix,
    }
    with atomic_open(path) as f:
        f.write(save(tensors, metadata={"format": FEATURES_FORMAT, "key": key, "meta": json.dumps(meta)}))


def load_features(path: pathlib.Path, key: str) -> Features | None:
    """The cached features, or None when the file is absent, stale or unreadable."""
    if existing_kind(path) != "a file":
        return None
    try:
        blob = read_input(path, "feature cache")
        header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")]).get("__metadata__") or {}
        if header.get("format") != FEATURES_FORMAT or header.get("key") != key:
            return None
        tensors = load(blob)
        meta = json.loads(header["meta"])
        features = Features(
            tensors["features"].float(),
            tensors.get("patch_labels"),
            tuple(meta["images"]),
            dict(meta["skipped"]),
            meta["pool"],
            (int(meta["grid"][0]), int(meta["grid"][1])),
            int(meta["n_prefix"]),
        )
        _check_features(features)
    # The cache is saev's own file, made again in a minute: anything wrong with it means recompute.
    except (
        SafetensorError,
        ConfigError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        RecursionError,
    ) as err:
        logger.warning("ignoring unreadable feature cache %s (%s); recomputing", path, err)
        return None
    return features


def _check_features(f: Features) -> None:
    """ValueError unless the cached arrays agree with the images they claim to hold."""
    rows = len(f.images) * (1 if f.patch_labels_IP is None else f.grid[0] * f.grid[1])
    if f.features_ND.ndim != 2 or len(f.features_ND) != rows or not torch.isfinite(f.features_ND).all():
        raise ValueError(f"features of shape {list(f.features_ND.shape)} for {len(f.images)} images")
    if f.patch_labels_IP is not None and f.patch_labels_IP.shape != (len(f.images), f.grid[0] * f.grid[1]):
        raise ValueError(f"patch labels of shape {list(f.patch_labels_IP.shape)}")


def extract(cfg: ProbeConfig, inputs: _Inputs) -> Features:
    """Run the ViT over the images (and read the masks) once."""
    vit = make_vit(cfg.vit_family, cfg.vit_ckpt).to(cfg.device)
    img_transform = make_img_transform(cfg.vit_family, cfg.vit_ckpt)
    layout = vit.layout
    pool: Pool = cfg.pool or ("cls" if layout.has_cls else "mean")
    if cfg.task == "classification" and pool == "cls" and not layout.has_cls:
        raise ConfigError(f"{vit.name} has no [CLS] token; use --pool mean.")
    labels_IP = None
    if inputs.masks is not None and cfg.masks is not None:
        # Every mask is read before the ViT runs: a bad mask fails the run before the heavy work.
        labels_IP = np.stack(
            [mask_patch_labels(img_transform, cfg.masks / rel, layout.grid) for rel in inputs.masks]
        )
        _check_segmentation_classes(labels_IP.reshape(-1), cfg.ignore_label, inputs.class_names, cfg.masks)
    feats, kept, skipped = compute_features(
        vit, img_transform, cfg.images, inputs.images, cfg.task, pool, cfg.vit_batch_size, cfg.device
    )
    if labels_IP is not None:
        feats = feats.reshape(-1, vit.d_vit)
        labels_IP = labels_IP[kept]
    return Features(
        feats,
        None if labels_IP is None else torch.from_numpy(labels_IP),
        tuple(inputs.images[i] for i in kept),
        skipped,
        pool,
        layout.grid,
        layout.n_prefix,
    )


def _check_segmentation_classes(
    labels_N: Int[np.ndarray, " n"],
    ignore_label: int,
    class_names: tuple[str, ...] | None,
    where: pathlib.Path,
) -> None:
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


def examples_from(cfg: ProbeConfig, inputs: _Inputs, feats: Features) -> Examples:
    """Feature vectors with class indices: one per image, or one per patch not ignored."""
    n_images = len(feats.images)
    if feats.patch_labels_IP is None:
        names = [rel.split("/", 1)[0] for rel in feats.images]
        classes = tuple(sorted(set(names)))
        if len(classes) < 2:
            raise ConfigError(
                f"{cfg.images}: images of at least two classes must be readable (only {classes})."
            )
        index = {c: i for i, c in enumerate(classes)}
        y_N = torch.tensor([index[c] for c in names], dtype=torch.int64)
        return Examples(feats.features_ND, y_N, torch.arange(n_images), classes, n_images)
    raw_N = feats.patch_labels_IP.reshape(-1).to(torch.int64)
    n_patches = feats.patch_labels_IP.shape[1]
    image_N = torch.arange(n_images).repeat_interleave(n_patches)
    keep_N = raw_N != cfg.ignore_label
    _check_segmentation_classes(raw_N[keep_N].numpy(), cfg.ignore_label, inputs.class_names, cfg.images)
    if inputs.class_names is not None:
        classes = inputs.class_names
        y_N = raw_N[keep_N]
    else:
        values = torch.unique(raw_N[keep_N])
        classes = tuple(str(int(v)) for v in values)
        y_N = torch.searchsorted(values, raw_N[keep_N])
    return Examples(feats.features_ND[keep_N], y_N, image_N[keep_N], classes, n_images)


# Training


def split_images(
    n_images: int, image_classes: list[int] | None, val_fraction: float, seed: int
) -> Int[np.ndarray, " n_val"]:
    """Seeded validation images: `val_fraction` of each class (of all images without classes),
    at least one in all, and never every image of a class."""
    rng = np.random.default_rng(seed)
    if image_classes is None:
        groups = [np.arange(n_images)]
    else:
        labels = np.asarray(image_classes)
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    val = []
    for members in groups:
        n_val = min(round(val_fraction * len(members)), len(members) - 1)
        val.append(rng.permutation(members)[:n_val])
    out = np.sort(np.concatenate(val)).astype(np.int64)
    if not len(out):
        biggest = max(groups, key=len)
        if len(biggest) < 2:
            raise ConfigError("too few images to hold any out for validation.")
        out = np.sort(rng.permutation(biggest)[:1]).astype(np.int64)
    return out


@dataclasses.dataclass(frozen=True)
class GridFit:
    weight_GDC: Float[Tensor, "heads d_vit classes"]
    """Weights on raw features (standardisation folded in)."""
    bias_GC: Float[Tensor, "heads classes"]
    scores: list[dict[str, Any]]
    """Per head: lr, weight_decay, train_accuracy, val_accuracy, val_loss."""


def adamw_step(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    lr_G: Float[Tensor, " heads"],
    wd_G: Float[Tensor, " heads"],
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One AdamW update (torch.optim.AdamW's formula) of G stacked heads, each with its own lr and
    weight decay along the first axis; in place."""
    b1, b2 = betas
    shape = (-1,) + (1,) * (param.ndim - 1)
    lr, wd = lr_G.view(shape), wd_G.view(shape)
    param.mul_(1 - lr * wd)
    exp_avg.lerp_(grad, 1 - b1)
    exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - b2**step)).add_(eps)
    param.sub_(lr / (1 - b1**step) * exp_avg / denom)


def _logits(
    x_ND: Float[Tensor, "n d_vit"], weight_GDC: Tensor, bias_GC: Tensor
) -> Float[Tensor, "heads n classes"]:
    return torch.einsum("nd,gdc->gnc", x_ND, weight_GDC) + bias_GC[:, None]


def _evaluate(
    x_ND: Float[Tensor, "n d_vit"],
    y_N: Int[Tensor, " n"],
    weight_GDC: Tensor,
    bias_GC: Tensor,
) -> tuple[Tensor, Tensor]:
    """Per head: accuracy [G] and mean cross-entropy [G]."""
    n_heads = weight_GDC.shape[0]
    correct = torch.zeros(n_heads, device=x_ND.device)
    loss = torch.zeros(n_heads, device=x_ND.device)
    with torch.inference_mode():
        for start in range(0, len(y_N), _EVAL_CHUNK):
            x, y = x_ND[start : start + _EVAL_CHUNK], y_N[start : start + _EVAL_CHUNK]
            logits_GNC = _logits(x, weight_GDC, bias_GC)
            pred_GN = logits_GNC.argmax(-1)
            correct += (pred_GN == y).sum(1)
            ce_GN = F.cross_entropy(logits_GNC.transpose(1, 2), y.expand(n_heads, -1), reduction="none")
            loss += ce_GN.sum(1)
    n = max(len(y_N), 1)
    return correct / n, loss / n


def train_grid(
    x_train_ND: Float[Tensor, "n_train d_vit"],
    y_train_N: Int[Tensor, " n_train"],
    x_val_ND: Float[Tensor, "n_val d_vit"],
    y_val_N: Int[Tensor, " n_val"],
    n_classes: int,
    lrs: tuple[float, ...],
    weight_decays: tuple[float, ...],
    epochs: int,
    batch_size: int,
    seed: int,
) -> GridFit:
    """Every (lr, weight decay) head trained together in one pass over the examples: AdamW on
    cross-entropy over standardised features, zero-initialised, the same seeded mini-batches for all."""
    device = x_train_ND.device
    mean_D = x_train_ND.mean(0)
    std_D = x_train_ND.std(0, correction=0).clamp_min(1e-6)
    xs_train = (x_train_ND - mean_D) / std_D
    settings = [(lr, wd) for lr in lrs for wd in weight_decays]
    n_heads, d = len(settings), x_train_ND.shape[1]
    lr_G = torch.tensor([s[0] for s in settings], dtype=torch.float32, device=device)
    wd_G = torch.tensor([s[1] for s in settings], dtype=torch.float32, device=device)
    weight_GDC = torch.zeros(n_heads, d, n_classes, device=device, requires_grad=True)
    bias_GC = torch.zeros(n_heads, n_classes, device=device, requires_grad=True)
    state = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for p in (weight_GDC, bias_GC)}
    zero_G = torch.zeros_like(wd_G)
    generator = torch.Generator().manual_seed(seed)
    n, step = len(y_train_N), 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            logits_GBC = _logits(xs_train[idx], weight_GDC, bias_GC)
            y_B = y_train_N[idx]
            # Summed over heads: each head's gradient is that of its own mean loss.
            loss = F.cross_entropy(logits_GBC.transpose(1, 2), y_B.expand(n_heads, -1), reduction="none")
            weight_GDC.grad = bias_GC.grad = None
            loss.mean(1).sum().backward()
            step += 1
            with torch.no_grad():
                for param, wd in ((weight_GDC, wd_G), (bias_GC, zero_G)):
                    adamw_step(param, param.grad, *state[id(param)], step, lr_G, wd)
    with torch.no_grad():
        # Fold the standardisation in: ((x - mean) / std) W + b = x (W / std) + (b - (mean / std) W).
        raw_weight = weight_GDC.detach() / std_D[None, :, None]
        raw_bias = bias_GC.detach() - torch.einsum("d,gdc->gc", mean_D, raw_weight)
    train_acc, _ = _evaluate(x_train_ND, y_train_N, raw_weight, raw_bias)
    val_acc, val_loss = _evaluate(x_val_ND, y_val_N, raw_weight, raw_bias)
    scores = [
        {
            "lr": lr,
            "weight_decay": wd,
            "train_accuracy": float(train_acc[g]),
            "val_accuracy": float(val_acc[g]),
            "val_loss": float(val_loss[g]),
        }
        for g, (lr, wd) in enumerate(settings)
    ]
    return GridFit(raw_weight, raw_bias, scores)


def best_head(scores: list[dict[str, Any]]) -> int:
    """Highest validation accuracy; ties to the lower validation loss, then to the first tried."""
    return min(range(len(scores)), key=lambda g: (-scores[g]["val_accuracy"], scores[g]["val_loss"], g))


def fit_probe(
    cfg: ProbeConfig, examples: Examples, vit_family: str, vit_ckpt: str, pool: Pool
) -> LinearProbe:
    """Split by image, train the grid, keep the best head, with its metrics."""
    image_classes = None
    if cfg.task == "classification":
        image_classes = [0] * examples.n_images
        for i, y in zip(examples.image_N.tolist(), examples.y_N.tolist(), strict=True):
            image_classes[i] = y
    val_images = torch.from_numpy(split_images(examples.n_images, image_classes, cfg.val_fraction, cfg.seed))
    is_val_N = torch.isin(examples.image_N, val_images)
    if is_val_N.all() or not is_val_N.any():
        raise ConfigError(
            f"{cfg.images}: the validation split left no {'training' if is_val_N.all() else 'validation'} "
            "examples; add images or change --val-fraction."
        )
    x_ND = examples.x_ND.to(cfg.device)
    y_N = examples.y_N.to(cfg.device)
    is_val_N = is_val_N.to(cfg.device)
    n_classes = len(examples.classes)
    fit = train_grid(
        x_ND[~is_val_N],
        y_N[~is_val_N],
        x_ND[is_val_N],
        y_N[is_val_N],
        n_classes,
        cfg.lrs,
        cfg.weight_decays,
        cfg.epochs,
        cfg.batch_size,
        cfg.seed,
    )
    g = best_head(fit.scores)
    weight_DC, bias_C = fit.weight_GDC[g].cpu(), fit.bias_GC[g].cpu()
    y_val_N = y_N[is_val_N].cpu()
    with torch.inference_mode():
        pred_N = (x_ND[is_val_N].cpu() @ weight_DC + bias_C).argmax(-1)
    per_class = {}
    for c, name in enumerate(examples.classes):
        of_class = y_val_N == c
        per_class[name] = float((pred_N[of_class] == c).float().mean()) if of_class.any() else None
    n_val_images = len(val_images)
    metrics = {
        **fit.scores[g],
        "per_class_val_accuracy": per_class,
        "n_train": int((~is_val_N).sum()),
        "n_val": int(is_val_N.sum()),
        "n_train_images": examples.n_images - n_val_images,
        "n_val_images": n_val_images,
        "unit": "image" if cfg.task == "classification" else "patch",
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
    }
    return LinearProbe(
        weight_DC,
        bias_C,
        examples.classes,
        cfg.task,
        pool,
        vit_family,
        vit_ckpt,
        metrics,
        fit.scores,
        cfg.ignore_label if cfg.task == "segmentation" else None,
    )


def train_probe(cfg: ProbeConfig) -> ProbeResult:
    """Features (cached in `cfg.out`), the grid of heads, and `cfg.out/probe.safetensors`."""
    check_options(cfg)
    inputs = gather_inputs(cfg)
    key = cache_key(cfg, inputs)
    cache = cfg.out / f"features-{key[:16]}.safetensors"
    feats = load_features(cache, key)
    reused = feats is not None
    if feats is None:
        feats = extract(cfg, inputs)
        save_features(cache, key, feats)
    else:
        logger.info("reusing cached features %s", cache)
    if feats.skipped:
        logger.warning("skipped %d unreadable image(s)", len(feats.skipped))
    examples = examples_from(cfg, inputs, feats)
    probe = fit_probe(cfg, examples, cfg.vit_family, cfg.vit_ckpt, feats.pool)
    path = cfg.out / "probe.safetensors"
    save_probe(path, probe)
    return ProbeResult(path, probe, cache, reused, feats.skipped)

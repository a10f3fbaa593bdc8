"""What `saev probe` is asked for (its options, checked before any work) and what it returns."""

import dataclasses
import math
import pathlib

import torch

from saev.activations.families import FamilyName
from saev.errors import ConfigError
from saev.fileio import OutputFolder
from saev.steering.probe_format import LinearProbe, Pool, Task

DEFAULT_LRS = (1e-3, 3e-3, 1e-2)
DEFAULT_WEIGHT_DECAYS = (0.0, 1e-4, 1e-2)


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
class ProbeResult:
    path: pathlib.Path
    """The saved probe."""
    probe: LinearProbe
    cache: pathlib.Path
    """The feature cache it was trained from."""
    reused_cache: bool
    skipped: dict[str, str]
    """Unreadable image -> reason."""


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

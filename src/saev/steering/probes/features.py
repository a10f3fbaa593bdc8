"""The ViT pass behind a probe: the final features (`Vit.features`) of every readable image, in one
batched pass, pooled for classification or every patch for segmentation, with each image's patch
labels."""

import dataclasses
import logging
import pathlib

import numpy as np
import torch
import tqdm
from jaxtyping import Float, Int
from torch import Tensor

from saev.activations.families import make_img_transform, make_vit
from saev.activations.families.base import Transform
from saev.activations.vit import Vit
from saev.data.images import ImageFiles, decode_batches, default_workers, none_readable
from saev.errors import ConfigError, ImageError
from saev.steering.probe_format import Pool, Task
from saev.steering.probes.config import ProbeConfig
from saev.steering.probes.inputs import Inputs
from saev.steering.probes.masks import check_segmentation_classes, mask_patch_labels

logger = logging.getLogger("saev.probe")


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
    decoded = decode_batches(
        ImageFiles(tuple(root / f for f in files)),
        img_transform,
        range(len(files)),
        batch_size,
        n_workers=default_workers(),
    )
    parts: list[Tensor] = []
    kept: list[int] = []
    skipped: dict[str, str] = {}
    bar = tqdm.tqdm(total=len(files), unit="img", desc="probe features", dynamic_ncols=True)
    with torch.inference_mode():
        for chunk in decoded:
            for item in chunk.failed:
                path = root / files[item.index]
                reason = item.unreadable or f"{path}: cannot preprocess ({item.unprocessable})"
                logger.warning("skipped %s", reason)
                skipped[files[item.index]] = reason
            if chunk.readable:
                parts.append(_final_features(vit, chunk.stack().to(device), task, pool))
                kept += [item.index for item in chunk.readable]
            bar.update(len(chunk.items))
    bar.close()
    if not parts:
        raise ImageError(f"{root}: {none_readable(len(files), list(skipped.values()))}")
    return torch.cat(parts), kept, skipped


def _final_features(vit: Vit, x_B3HW: Tensor, task: Task, pool: Pool) -> Tensor:
    """A batch's final features on the CPU: every patch's (segmentation), else pooled by `pool`."""
    n_prefix, n_patches = vit.layout.n_prefix, vit.layout.n_patches
    feats_BTD = vit.features(vit.run_to(x_B3HW, -1))
    if feats_BTD.shape[1] != n_prefix + n_patches:
        raise ConfigError(
            f"{vit.name} made {feats_BTD.shape[1]} tokens, not {n_prefix} + {n_patches} patches; "
            "use images from the family's transform."
        )
    if task == "segmentation":
        return feats_BTD[:, n_prefix:].float().cpu()
    if pool == "cls":
        return feats_BTD[:, 0].float().cpu()
    return feats_BTD[:, n_prefix:].mean(1).float().cpu()


def extract(cfg: ProbeConfig, inputs: Inputs) -> Features:
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
        check_segmentation_classes(labels_IP.reshape(-1), cfg.ignore_label, inputs.class_names, cfg.masks)
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

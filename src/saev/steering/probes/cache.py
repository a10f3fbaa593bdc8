"""The feature cache: features are computed once and cached in the output folder under a hash of the
model, the task, the pooling and the image (and mask) files with their sizes and mtimes, so that a
rerun trains from the cache."""

import hashlib
import json
import logging
import os
import pathlib
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from saev.errors import ConfigError
from saev.fileio import atomic_open, existing_kind, read_input
from saev.steering.probes.config import ProbeConfig
from saev.steering.probes.features import Features
from saev.steering.probes.inputs import Inputs

logger = logging.getLogger("saev.probe")

FEATURES_FORMAT = "saev-probe-features/1"


def cache_key(cfg: ProbeConfig, inputs: Inputs) -> str:
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

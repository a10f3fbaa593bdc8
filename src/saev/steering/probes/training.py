"""Training a probe: features (cached), examples, a validation split by image, the grid of heads,
and the head with the best validation accuracy saved with its metrics."""

import dataclasses
import logging

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from saev.errors import ConfigError
from saev.steering.probe_format import LinearProbe, Pool, save_probe
from saev.steering.probes.cache import cache_key, load_features, save_features
from saev.steering.probes.config import ProbeConfig, ProbeResult, check_options
from saev.steering.probes.features import Features, extract
from saev.steering.probes.grid import best_head, train_grid
from saev.steering.probes.inputs import Inputs, gather_inputs
from saev.steering.probes.masks import check_segmentation_classes

logger = logging.getLogger("saev.probe")


@dataclasses.dataclass(frozen=True)
class Examples:
    """Training examples: a feature vector, a class index and the image it comes from."""

    x_ND: Float[Tensor, "n d_vit"]
    y_N: Int[Tensor, " n"]
    image_N: Int[Tensor, " n"]
    classes: tuple[str, ...]
    n_images: int


def examples_from(cfg: ProbeConfig, inputs: Inputs, feats: Features) -> Examples:
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
    check_segmentation_classes(raw_N[keep_N].numpy(), cfg.ignore_label, inputs.class_names, cfg.images)
    if inputs.class_names is not None:
        classes = inputs.class_names
        y_N = raw_N[keep_N]
    else:
        values = torch.unique(raw_N[keep_N])
        classes = tuple(str(int(v)) for v in values)
        y_N = torch.searchsorted(values, raw_N[keep_N])
    return Examples(feats.features_ND[keep_N], y_N, image_N[keep_N], classes, n_images)


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

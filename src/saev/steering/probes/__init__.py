"""Training linear probes on a ViT's final tokens (`Vit.features`): classification of labelled
image folders, segmentation from label masks.

The features are computed once (`features`) and cached in the output folder (`cache`); a grid of
learning rates x weight decays is trained in one pass over them (`grid`), and the head with the
best validation accuracy is kept (`training`). `inputs` reads the image folders, `masks` turns
segmentation masks into patch labels, `config` holds the options.
"""

from saev.steering.probes.cache import FEATURES_FORMAT, cache_key, load_features, save_features
from saev.steering.probes.config import (
    DEFAULT_LRS,
    DEFAULT_WEIGHT_DECAYS,
    ProbeConfig,
    ProbeResult,
    check_options,
)
from saev.steering.probes.features import Features, compute_features, extract
from saev.steering.probes.grid import GridFit, adamw_step, best_head, train_grid
from saev.steering.probes.inputs import Inputs, gather_inputs, read_class_names
from saev.steering.probes.masks import (
    MASK_MODES,
    mask_crop,
    mask_patch_labels,
    nearest_step,
    patch_majority,
    read_mask,
)
from saev.steering.probes.training import Examples, examples_from, fit_probe, split_images, train_probe

__all__ = [
    "DEFAULT_LRS",
    "DEFAULT_WEIGHT_DECAYS",
    "FEATURES_FORMAT",
    "MASK_MODES",
    "Examples",
    "Features",
    "GridFit",
    "Inputs",
    "ProbeConfig",
    "ProbeResult",
    "adamw_step",
    "best_head",
    "cache_key",
    "check_options",
    "compute_features",
    "examples_from",
    "extract",
    "fit_probe",
    "gather_inputs",
    "load_features",
    "mask_crop",
    "mask_patch_labels",
    "nearest_step",
    "patch_majority",
    "read_class_names",
    "read_mask",
    "save_features",
    "split_images",
    "train_grid",
    "train_probe",
]

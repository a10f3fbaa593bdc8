"""The scorecard's settings, apart from the metrics so the CLI can build its help without importing
scikit-learn (1.8 s) for every command."""

import dataclasses
import pathlib

RESAMPLES = 200
"""Bootstrap resamples behind each interval (saev.bench.stats reads it too)."""


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """How the scorecard is computed (the same for every SAE)."""

    head: str | None = None
    """Head for spliced preservation and steering (default: builtin-patch in the built-in world)."""
    evaluator: str | None = None
    """FAMILY/CKPT of the model embedding images for monosemanticity (default: the built-in ViT in
    the built-in world; elsewhere pick a model other than the SAE's)."""
    masks: pathlib.Path | None = None
    """Folder of label masks mirroring the image root (matched by relative path without extension;
    integer labels as `saev probe` reads them; 0 is background, 255 ignored): concept detection
    and steering then run on your images."""
    mask_classes: pathlib.Path | None = None
    """Names of the mask labels, line i naming label i (default: label-1, label-2, ...)."""
    hierarchy: pathlib.Path | None = None
    """JSON {parent: [child, ...]} over class-folder names, for absorption (built in for the built-in world)."""
    max_images: int | None = None
    """Score at most this many images (the first ones of the store)."""
    resamples: int = RESAMPLES
    """Bootstrap resamples behind each interval."""
    steering_images: int = 500
    """Images behind steering selectivity (each costs two forward passes per concept)."""
    batch_size: int = 32
    """Images per forward pass of the ViT (preservation, steering, evaluator)."""
    seed: int = 0
    force: bool = False
    """Score an SAE on activations of another layer, ViT or token selection than it was trained on."""
    device: str = "cpu"

"""How latents are named, apart from the naming code so the CLI can build its help without
importing scikit-learn for every command."""

import dataclasses
import pathlib

MIN_F1 = 0.5
"""Below this F1 on the choosing images a latent is unexplained."""


@dataclasses.dataclass(frozen=True)
class NamingSettings:
    """Where candidate names come from and how a latent earns one."""

    masks: pathlib.Path | None = None
    """Folder of label masks mirroring the image root (as `saev bench --masks`): mask labels become
    patch candidates."""
    mask_classes: pathlib.Path | None = None
    """Names of the mask labels, line i naming label i (default: label-1, label-2, ...)."""
    vocabulary: pathlib.Path | None = None
    """Words for zero-shot names, one per line (CLIP/SigLIP models only; default: the shipped list of
    ~320 common visual words)."""
    words: bool = True
    """Name latents with zero-shot words too, when the store's model has a text tower."""
    top_words: int = 3
    """A word is true of an image when it is among the image's best-matching words."""
    min_f1: float = MIN_F1
    """A latent whose best candidate detects it with a lower F1 (on the choosing images) is left unexplained."""
    max_images: int | None = 10_000
    """Name on at most this many images, spread evenly over the store."""
    seed: int = 0
    """Seed of the split into choosing and scoring images."""
    batch_size: int = 32
    """Images per forward pass for zero-shot words."""
    force: bool = False
    """Read a layer, ViT or token selection other than the SAE was trained on."""
    device: str = "cpu"
    """Torch device."""

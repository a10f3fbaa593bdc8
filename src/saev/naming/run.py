"""Name an SAE's latents on a store: gather its codes once, collect every candidate the images
offer, and keep each latent's best (see `names`)."""

import logging
from collections.abc import Sequence

import numpy as np

from saev.activations import provenance
from saev.activations.families import make_img_transform, make_vit
from saev.bench import inputs
from saev.data.store import ShardStore
from saev.errors import ConfigError
from saev.naming import candidates as cands
from saev.naming.names import Naming, name_latents
from saev.naming.settings import NamingSettings
from saev.nn import checkpoints
from saev.steering.heads import TEXT_FAMILIES
from saev.visuals.lookup import ImageLookup

logger = logging.getLogger("saev.naming")


def label(
    sae_spec: str, store: ShardStore, settings: NamingSettings, images_override: str | None = None
) -> Naming:
    """Every latent of the SAE at `sae_spec`, named (or unexplained) from what `store`'s images offer."""
    _check(settings)
    sae = checkpoints.load(sae_spec, device=settings.device).eval()
    layer = provenance.patch_layer(sae.provenance, store, sae_spec, settings.force)
    images = spread(len(store), settings.max_images)
    lookup = ImageLookup(store, images_override)
    found = _candidates(store, images, lookup, settings)
    gathered = inputs.gather(sae, store, layer, images, device=settings.device)
    naming = name_latents(gathered, found, min_f1=settings.min_f1, seed=settings.seed)
    method = naming.method | {"sae": sae_spec, "store": str(store.path), "layer": store.layer_label(layer)}
    return Naming(naming.names, method)


def spread(n: int, at_most: int | None) -> list[int]:
    """At most `at_most` of `n` store indices, evenly spaced (class folders are recorded in order)."""
    if at_most is None or at_most >= n:
        return list(range(n))
    return np.unique(np.linspace(0, n - 1, at_most).round().astype(int)).tolist()


def _check(settings: NamingSettings) -> None:
    if not 0 < settings.min_f1 <= 1:
        raise ConfigError(f"--min-f1 must be in (0, 1], got {settings.min_f1}.")
    if settings.max_images is not None and settings.max_images < 4:
        raise ConfigError(
            f"--max-images must be at least 4 (half choose names, half score them), got {settings.max_images}."
        )
    if settings.batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {settings.batch_size}.")


def _candidates(
    store: ShardStore, images: Sequence[int], lookup: ImageLookup, settings: NamingSettings
) -> list[cands.Candidates]:
    records = [store.images[i] for i in images] if store.images else [lookup.describe(i) for i in images]
    known = inputs.knowledge(store, images, lookup.root, None)
    files = [r.get("path", "") for r in records]
    if settings.masks is not None:
        transform = make_img_transform(store.meta.vit_family, store.meta.vit_ckpt)
        known = inputs.with_masks(known, files, settings.masks, settings.mask_classes, transform, store.grid)
    found = cands.from_knowledge(known)
    # The built-in world's image "labels" are its folder names, not what the images show.
    if known.source != "built-in world":
        found += cands.from_labels([r.get("label") for r in records])
    if settings.words and store.meta.vit_family in TEXT_FAMILIES:
        vocabulary = settings.vocabulary or cands.default_vocabulary()
        vit = make_vit(store.meta.vit_family, store.meta.vit_ckpt).to(settings.device).eval()
        transform = make_img_transform(store.meta.vit_family, store.meta.vit_ckpt)
        found += cands.from_text(
            vit,
            transform,
            lookup,
            images,
            vocabulary,
            top_words=settings.top_words,
            batch_size=settings.batch_size,
            device=settings.device,
        )
    elif settings.vocabulary is not None:
        raise ConfigError(
            f"--vocabulary {settings.vocabulary}: {store.meta.vit_family} models have no text tower "
            f"(zero-shot words need one of {', '.join(TEXT_FAMILIES)})."
        )
    return found

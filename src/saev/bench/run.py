"""`saev bench`: score SAEs on one set of images, metric by metric, each with a bootstrap interval.

The store's images are encoded once per SAE; every metric reads that pass (see `inputs`). Metrics
that need what the inputs lack (labels, patch masks, a head, an evaluator, reseeded SAEs) are
skipped with the reason, never guessed.
"""

import dataclasses
import logging
import math
import pathlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import tqdm
from PIL import Image

from saev.activations import provenance
from saev.activations.families import make_img_transform, make_vit
from saev.bench import downstream, inputs
from saev.bench.absorption import absorption
from saev.bench.detection import detection
from saev.bench.monosemanticity import monosemanticity
from saev.bench.probing import sparse_probing
from saev.bench.reconstruction import fvu
from saev.bench.settings import BenchSettings
from saev.bench.sparsity import sparsity
from saev.bench.spatial import morans_i
from saev.bench.stability import stability
from saev.bench.stats import Metric
from saev.data.store import ShardStore
from saev.errors import ConfigError
from saev.fileio import existing_kind, read_json
from saev.nn import checkpoints
from saev.nn.modeling import SparseAutoencoder
from saev.steering.heads import open_head
from saev.steering.splice import SplicedVit
from saev.visuals.lookup import ImageLookup

logger = logging.getLogger("saev.bench")


@dataclasses.dataclass(frozen=True)
class Scorecard:
    sae: str
    metrics: list[Metric]
    skipped: dict[str, str]
    """Metric group -> why it was not computed."""
    n_images: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "sae": self.sae,
            "n_images": self.n_images,
            "seconds": self.seconds,
            "metrics": [m.to_json() for m in self.metrics],
            "skipped": self.skipped,
        }


def score(
    sae_spec: str,
    store: ShardStore,
    settings: BenchSettings,
    *,
    reseeds: Sequence[str] = (),
    images_override: str | None = None,
) -> Scorecard:
    """The scorecard of one SAE on `store`'s images."""
    started = time.perf_counter()
    sae = checkpoints.load(sae_spec, device=settings.device).eval()
    layer = provenance.patch_layer(sae.provenance, store, sae_spec, settings.force)
    images = list(range(len(store) if settings.max_images is None else min(len(store), settings.max_images)))
    if len(images) < 10:
        raise ConfigError(f"{store.path}: {len(images)} image(s); a scorecard needs at least 10.")
    lookup = ImageLookup(store, images_override)
    known = inputs.knowledge(store, images, lookup.root, settings.hierarchy)
    if settings.masks is not None:
        transform = make_img_transform(store.meta.vit_family, store.meta.vit_ckpt)
        files = [store.images[i].get("path", "") for i in images] if store.images else []
        known = inputs.with_masks(known, files, settings.masks, settings.mask_classes, transform, store.grid)
    gathered = inputs.gather(sae, store, layer, images, device=settings.device)
    skipped: dict[str, str] = {}
    bar = tqdm.tqdm(total=7, desc="metrics", unit="step")
    metrics = _array_metrics(
        sae, sae_spec, store, layer, images, known, gathered, settings, reseeds, skipped, bar
    )
    bar.close()
    concept_latents: dict[str, int] = next(
        (m.details["latents"] for m in metrics if m.name == "detection_f1"), {}
    )
    metrics += _pixel_metrics(
        sae, sae_spec, layer, store, lookup, images, known, gathered, concept_latents, settings, skipped
    )
    return Scorecard(sae_spec, metrics, skipped, len(images), time.perf_counter() - started)


def _array_metrics(
    sae: SparseAutoencoder,
    sae_spec: str,
    store: ShardStore,
    layer: int,
    images: list[int],
    known: inputs.Knowledge,
    gathered: inputs.Gathered,
    settings: BenchSettings,
    reseeds: Sequence[str],
    skipped: dict[str, str],
    bar: tqdm.tqdm,
) -> list[Metric]:
    """The metrics computed from the encoding pass alone."""
    r, seed = settings.resamples, settings.seed
    _step(bar, "reconstruction")
    unseen = heldout(sae_spec, store, images)
    if unseen.sum() < 10:
        logger.warning(
            "%s: %d held-out image(s) in this store; FVU is measured on all images", sae_spec, unseen.sum()
        )
        unseen[:] = True
    fidelity = fvu(gathered.sums.subset(unseen), resamples=r, seed=seed)
    metrics: list[Metric] = [
        dataclasses.replace(fidelity, details=fidelity.details | {"held_out_images": int(unseen.sum())})
    ]
    _step(bar, "sparsity")
    metrics += sparsity(gathered.fires_NS, gathered.tokens_N, resamples=r, seed=seed)
    _step(bar, "spatial")
    metrics += morans_i(gathered.codes.blocks(), store.grid, resamples=r, seed=seed)
    _step(bar, "probing")
    if known.tasks:
        dense = inputs.dense_pooled(store, layer, images)
        metrics += sparse_probing(gathered.pooled_NS, dense, known.tasks, resamples=r, seed=seed)
    else:
        skipped["probing"] = "the images have no labels (class folders or the built-in world)"
    _step(bar, "detection")
    if known.patch_NPC is not None:
        found = detection(
            _with_masks(gathered.codes, known.patch_NPC), known.concepts, resamples=r, seed=seed
        )
        metrics += found
    else:
        skipped["detection"] = "no patch masks (--masks; the built-in world has its own)"
    _step(bar, "absorption")
    if known.hierarchies and known.items is not None:
        unit = "images" if known.items.patches_MP is None else "objects"
        metrics += absorption(
            known.items.codes(gathered), known.hierarchies, resamples=r, seed=seed, unit=unit
        )
    else:
        skipped["absorption"] = "no label hierarchy (--hierarchy, or the built-in world's)"
    _step(bar, "stability")
    if reseeds:
        decoders = [sae.W_dec.detach().cpu()] + [checkpoints.load(s).W_dec.detach() for s in reseeds]
        metrics += stability(decoders, resamples=r, seed=seed)
    else:
        skipped["stability"] = "no other seeds of this SAE's configuration (--seeds-of)"
    return metrics


def _step(bar: tqdm.tqdm, name: str) -> None:
    """Name the step starting on the metrics bar (it counts steps started)."""
    bar.set_postfix_str(name, refresh=False)
    bar.update()


def heldout(spec: str, store: ShardStore, images: Sequence[int]) -> np.ndarray:
    """[len(images)] bool: the images the SAE never trained on. A run folder's config.json names its
    store and held-out share (the last images, as the trainer splits); an SAE from elsewhere
    trained on none of these."""
    cfg = _run_config(spec)
    shards, share = (cfg.get("shards"), cfg.get("holdout")) if cfg else (None, None)
    if not isinstance(shards, str) or not isinstance(share, int | float):
        return np.ones(len(images), dtype=bool)
    if pathlib.Path(shards).resolve() != store.path.resolve():
        return np.ones(len(images), dtype=bool)
    return np.asarray(images) >= len(store) - math.ceil(share * len(store))


def _with_masks(
    codes: inputs.PatchCodes, patch_NPC: np.ndarray
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    size = codes.block_size()
    for start in range(0, codes.n_images, size):
        stop = min(start + size, codes.n_images)
        yield codes.block(start, stop), torch.from_numpy(patch_NPC[start:stop])


def _pixel_metrics(
    sae: SparseAutoencoder,
    where: str,
    layer: int,
    store: ShardStore,
    lookup: ImageLookup,
    images: list[int],
    known: inputs.Knowledge,
    gathered: inputs.Gathered,
    concept_latents: dict[str, int],
    settings: BenchSettings,
    skipped: dict[str, str],
) -> list[Metric]:
    """Metrics that run a model on the images' pixels: monosemanticity (the evaluator), spliced
    preservation and steering (the SAE's ViT and a head)."""
    pictures = {
        i: img for i in tqdm.tqdm(images, desc="images", unit="img") if (img := lookup.load(i)) is not None
    }
    readable = list(pictures)
    if len(readable) < len(images) // 2 or len(readable) < 10:
        why = (
            f"only {len(readable)} of the {len(images)} images can be read from their files (moved? --images)"
        )
        for group in ("monosemanticity", "preservation", "steering"):
            skipped[group] = why
        return []
    out: list[Metric] = []
    builtin_world = known.source == "built-in world"
    evaluator = settings.evaluator or ("builtin/shapes-vit" if builtin_world else None)
    pos = {i: k for k, i in enumerate(images)}
    rows = [pos[i] for i in readable]
    if evaluator is None:
        skipped["monosemanticity"] = (
            "no --evaluator FAMILY/CKPT (a model other than the SAE's, to embed images)"
        )
    else:
        family, _, ckpt = evaluator.partition("/")
        vit = make_vit(family, ckpt).to(settings.device).eval()
        batches = _pixels(pictures, readable, make_img_transform(family, ckpt), settings)
        emb = downstream.embeddings(vit, batches, -(-len(readable) // settings.batch_size))
        # Centred: raw embeddings of one model share a large common direction (random images of the
        # built-in world have cosine 0.94), which squeezes every latent towards the same score.
        emb = emb - emb.mean(0)
        metric = monosemanticity(
            gathered.pooled_NS[rows], emb, resamples=settings.resamples, seed=settings.seed
        )
        details = metric.details | {"evaluator": evaluator, "embeddings": "centred"}
        out.append(dataclasses.replace(metric, details=details))
    head_spec = settings.head or ("builtin-patch" if builtin_world else None)
    if head_spec is None:
        skipped["preservation"] = skipped["steering"] = "no --head"
        return out
    family, ckpt = store.meta.vit_family, store.meta.vit_ckpt
    vit = make_vit(family, ckpt).to(settings.device).eval()
    spliced = SplicedVit(vit, sae, layer, "patches", force=True, where=where)
    head = open_head(head_spec, vit)
    transform = make_img_transform(family, ckpt)
    mean_D = (
        sae.act_mean
        if sae.act_mean is not None
        else torch.from_numpy(inputs.dense_pooled(store, layer, images).mean(0)).to(settings.device)
    )
    out += downstream.preservation(
        spliced,
        head,
        _pixels(pictures, readable, transform, settings),
        mean_D,
        resamples=settings.resamples,
        seed=settings.seed,
    )
    targets = [(head.classes.index(c), latent) for c, latent in concept_latents.items() if c in head.classes]
    if not targets:
        skipped["steering"] = (
            "no concept of the head has a detected latent (needs patch masks of the head's classes)"
        )
        return out
    max_S = torch.from_numpy(gathered.pooled_NS.max(0)).to(settings.device)
    out += downstream.steering(
        spliced,
        head,
        _pixels(pictures, readable[: settings.steering_images], transform, settings),
        targets,
        max_S,
        resamples=settings.resamples,
        seed=settings.seed,
    )
    return out


def _pixels(
    pictures: dict[int, Image.Image], images: list[int], transform, settings: BenchSettings
) -> Iterator[torch.Tensor]:
    """Batches of `images` (decoded once, in `pictures`) as the model's inputs."""
    for start in range(0, len(images), settings.batch_size):
        batch = images[start : start + settings.batch_size]
        yield torch.stack([transform(pictures[i]) for i in batch]).to(settings.device)


def reseeds_of(specs: Sequence[str], seeds_of: Sequence[str]) -> dict[str, list[str]]:
    """Each SAE's other seeds among `seeds_of` (and the other `specs`): runs whose config.json
    differ only in their seeds. With one SAE and no run configs, every `seeds_of` is its reseed."""
    configs = {s: _without_seeds(_run_config(s)) for s in (*specs, *seeds_of)}
    if len(specs) == 1 and configs[specs[0]] is None:
        return {specs[0]: list(seeds_of)}
    out = {}
    for spec in specs:
        mine = configs[spec]
        out[spec] = [o for o in (*specs, *seeds_of) if o != spec and mine is not None and configs[o] == mine]
    return out


def _run_config(spec: str) -> dict[str, Any] | None:
    """The settings in a run folder's config.json (None when the SAE is not in a run folder)."""
    path = pathlib.Path(spec)
    folder = path if path.is_dir() else path.parent
    if existing_kind(folder / "config.json") != "a file":
        return None
    data = read_json(folder / "config.json", "run config", ConfigError)
    cfg = data.get("config") if isinstance(data, dict) else None
    return cfg if isinstance(cfg, dict) else None


def _without_seeds(cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if cfg is None else {k: v for k, v in cfg.items() if k not in ("seed", "data_seed", "out")}

"""`saev visuals`: top-k images per latent, saved as data and as a browsable static gallery."""

import dataclasses
import logging
import math
import pathlib
from collections import defaultdict
from typing import Literal

import numpy as np
import torch
import tqdm
from PIL import Image
from safetensors.torch import save

from saev.activations.families import make_img_transform
from saev.activations.transforms import visible_crop
from saev.data.store import ShardStore, open_shards
from saev.errors import ConfigError, ModelError, StoreError
from saev.fileio import atomic_open, write_json
from saev.nn import checkpoints
from saev.visuals import gallery
from saev.visuals.heatmap import overlay, placeholder
from saev.visuals.lookup import ImageLookup
from saev.visuals.topk import HIST_EDGES, TopActivations, log_freq, top_activations

logger = logging.getLogger("saev.visuals")
THUMB = 224


@dataclasses.dataclass(frozen=True)
class VisualsConfig:
    """Find each latent's maximally activating images and build a static HTML gallery of them."""

    sae: str
    """SAE checkpoint: a path, hf://ORG/NAME or hf://ORG/NAME/FILE."""
    shards: pathlib.Path
    """Activation store the SAE reads."""
    out: pathlib.Path = pathlib.Path("visuals")
    """Folder for topk.safetensors, latents.json and the gallery (index.html)."""
    layer: int = -2
    """Layer of the store the SAE reads."""
    top_k: int = 16
    """Images kept per latent."""
    sort_by: Literal["patch", "img", "cls"] = "patch"
    """Rank images by the latent's max over patches, its sum over patches, or its [CLS] activation."""
    latents: tuple[int, ...] = ()
    """Latents to render (default: chosen by --n-latents and --log-freq-range)."""
    n_latents: int = 200
    """How many latents to render when --latents is not given (a seeded sample of the live ones)."""
    log_freq_range: tuple[float, float] = (-math.inf, 0.0)
    """Only render latents whose log10 firing frequency lies in this range."""
    images: str | None = None
    """Image source overriding the store's images.json (a folder root or hf:NAME:SPLIT)."""
    all_maps: bool = False
    """Save patch maps of every latent in topk.safetensors, not only the rendered ones."""
    seed: int = 0
    """Seed of the latent sample."""
    device: str = "cpu"
    """Torch device for encoding."""


@dataclasses.dataclass(frozen=True)
class VisualsResult:
    index: pathlib.Path
    rendered: list[int]
    n_missing_images: int


def make_visuals(
    cfg: VisualsConfig,
    notes: dict[int, str] | None = None,
    figures: dict[int, list[gallery.Figure]] | None = None,
) -> VisualsResult:
    """`notes` annotate latents in the index and on their pages (e.g. the concept a latent detects);
    `figures` (files already in the output folder) are shown on their latents' pages."""
    if cfg.top_k < 1 or cfg.n_latents < 0:
        raise ConfigError(f"--top-k must be >= 1 and --n-latents >= 0 (got {cfg.top_k}, {cfg.n_latents}).")
    sae = checkpoints.load(cfg.sae)
    store = open_shards(cfg.shards)
    bad = [s for s in cfg.latents if not 0 <= s < sae.cfg.d_sae]
    if bad:
        raise ConfigError(f"--latents {bad} out of range: the SAE has {sae.cfg.d_sae} latents.")
    lookup = ImageLookup(store, cfg.images)
    if sae.normalization is None:
        logger.warning(
            "%s carries no normalisation statistics; codes assume its inputs are already normalised (see `saev normalize`).",
            cfg.sae,
        )
    top = top_activations(sae, store, cfg.layer, cfg.top_k, cfg.sort_by, device=cfg.device)
    chosen = _choose(cfg, top)
    cfg.out.mkdir(parents=True, exist_ok=True)
    notes = notes or {}
    _save_data(cfg, top, chosen, lookup, notes)
    grid = _grid(store)
    pages = [
        dataclasses.replace(page, figures=(figures or {}).get(page.latent, []))
        for page in _render(cfg, top, chosen, lookup, store, grid, notes)
    ]
    rendered = set(chosen)
    rows = [
        row | {"page": row["latent"] in rendered, "note": notes.get(row["latent"], "")}
        for row in _stat_rows(top)
    ]
    for i, page in enumerate(pages):
        prev_id = pages[i - 1].latent if i else None
        next_id = pages[i + 1].latent if i + 1 < len(pages) else None
        gallery.write_latent_page(cfg.out, page, prev_id, next_id, cfg.sort_by)
    meta = store.meta
    subtitle = f"{cfg.sae} on {meta.vit_family}/{meta.vit_ckpt} layer {cfg.layer}, {len(store):,} images; {len(chosen)} latents rendered, {sum(r['dead'] for r in rows)} dead."
    index = gallery.write_index(cfg.out, rows, "SAE latents", subtitle)
    if lookup.missing:
        logger.warning("%d image(s) could not be found or read; drawn as placeholders", len(lookup.missing))
    return VisualsResult(index, chosen, len(lookup.missing))


def _choose(cfg: VisualsConfig, top: TopActivations) -> list[int]:
    if cfg.latents:
        return sorted(set(cfg.latents))
    lf = log_freq(top.stats.freq_S)
    lo, hi = cfg.log_freq_range
    live = np.nonzero(np.isfinite(lf) & (lf >= lo) & (lf <= hi))[0]
    if len(live) > cfg.n_latents:
        live = np.random.default_rng(cfg.seed).choice(live, cfg.n_latents, replace=False)
    return sorted(int(s) for s in live)


def _save_data(
    cfg: VisualsConfig, top: TopActivations, chosen: list[int], lookup: ImageLookup, notes: dict[int, str]
) -> None:
    mapped = list(range(top.values_SK.shape[0])) if cfg.all_maps else chosen
    tensors = {
        "values": top.values_SK.float(),
        "image_i": top.image_i_SK,
        "patch_maps": top.patch_maps_SKP[mapped].float().contiguous(),
        "patch_map_latents": torch.tensor(mapped, dtype=torch.int64),
        "freq": top.stats.freq_S.float(),
        "mean": top.stats.mean_S,
        "max": top.stats.max_S,
        "hist": top.stats.hist_SB,
        "hist_edges": HIST_EDGES,
    }
    meta = {
        "sort_by": cfg.sort_by,
        "layer": str(cfg.layer),
        "sae": cfg.sae,
        "shards": str(cfg.shards),
        "n_tokens": str(top.stats.n_tokens),
    }
    with atomic_open(cfg.out / "topk.safetensors") as f:
        f.write(save(tensors, metadata=meta))
    rendered = set(chosen)
    latents = []
    for row in _stat_rows(top):
        s = row["latent"]
        ranked = zip(top.image_i_SK[s].tolist(), top.values_SK[s].tolist(), strict=True)
        images = [
            {"image_i": i, "value": v, "source": lookup.path(i), "label": lookup.describe(i).get("label")}
            for i, v in ranked
            if i >= 0
        ]
        latents.append(row | {"rendered": s in rendered, "note": notes.get(s, ""), "top": images})
    write_json(
        cfg.out / "latents.json",
        {"sort_by": cfg.sort_by, "n_tokens": top.stats.n_tokens, "latents": latents},
        indent=None,
    )


def _grid(store: ShardStore) -> tuple[int, int]:
    try:
        return store.grid
    except StoreError as err:
        raise ConfigError(f"cannot draw heatmaps: {err}") from None


def thumb_size(grid: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of a thumbnail: THUMB px on the longer side, the grid's aspect ratio."""
    rows, cols = grid
    if rows >= cols:
        return max(1, round(THUMB * cols / rows)), THUMB
    return THUMB, max(1, round(THUMB * rows / cols))


def _crop_fn(store: ShardStore, size: tuple[int, int]):
    """The crop the store's ViT saw; a centre crop of the grid's aspect when its transform is unavailable."""
    try:
        transform = make_img_transform(store.meta.vit_family, store.meta.vit_ckpt)
        return lambda img: visible_crop(transform, img).resize(size, Image.BICUBIC)
    except ModelError as err:
        logger.warning(
            "no image transform for %s/%s (%s); showing centre crops",
            store.meta.vit_family,
            store.meta.vit_ckpt,
            err,
        )

        def centre(img: Image.Image) -> Image.Image:
            scale = min(img.width / size[0], img.height / size[1])
            w, h = round(size[0] * scale), round(size[1] * scale)
            left, top = (img.width - w) // 2, (img.height - h) // 2
            return img.crop((left, top, left + w, top + h)).resize(size, Image.BICUBIC)

        return centre


def _render(
    cfg: VisualsConfig,
    top: TopActivations,
    chosen: list[int],
    lookup: ImageLookup,
    store: ShardStore,
    grid: tuple[int, int],
    notes: dict[int, str],
) -> list[gallery.LatentPage]:
    """Draw every (latent, rank) thumbnail, decoding each source image once."""
    size = thumb_size(grid)
    crop = _crop_fn(store, size)
    by_image: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for s in chosen:
        for r, i in enumerate(top.image_i_SK[s].tolist()):
            if i >= 0:
                by_image[i].append((s, r))
    vmax = {s: float(top.patch_maps_SKP[s].max()) for s in chosen}
    for s in chosen:
        (cfg.out / "thumbs" / str(s)).mkdir(parents=True, exist_ok=True)
    for i in tqdm.tqdm(sorted(by_image), unit="img", desc="drawing", dynamic_ncols=True):
        img = lookup.load(i)
        base = crop(img) if img is not None else placeholder(size, f"missing: {lookup.path(i)}")
        for s, r in by_image[i]:
            tile = (
                base
                if img is None or cfg.sort_by == "cls"
                else overlay(base, top.patch_maps_SKP[s, r].numpy(), grid, vmax[s])
            )
            tile.save(cfg.out / "thumbs" / str(s) / f"{r}.jpg", quality=82, optimize=True)
    edges = HIST_EDGES.tolist()
    pages = []
    for s in chosen:
        images = [
            gallery.TopImage(
                r,
                i,
                float(top.values_SK[s, r]),
                f"thumbs/{s}/{r}.jpg",
                size,
                lookup.path(i),
                lookup.describe(i).get("label"),
                i in lookup.missing,
            )
            for r, i in enumerate(top.image_i_SK[s].tolist())
            if i >= 0
        ]
        st = top.stats
        pages.append(
            gallery.LatentPage(
                s,
                notes.get(s, ""),
                float(st.freq_S[s]),
                float(st.mean_S[s]),
                float(st.max_S[s]),
                st.n_tokens,
                st.hist_SB[s].tolist(),
                edges,
                images,
            )
        )
    return pages


def _stat_rows(top: TopActivations) -> list[dict]:
    """Each latent's statistics, as listed in latents.json and the gallery index."""
    lf = log_freq(top.stats.freq_S)
    return [
        {
            "latent": s,
            "freq": float(top.stats.freq_S[s]),
            "log10_freq": float(lf[s]) if np.isfinite(lf[s]) else None,
            "mean": float(top.stats.mean_S[s]),
            "max": float(top.stats.max_S[s]),
            "dead": bool(top.stats.freq_S[s] == 0),
        }
        for s in range(top.values_SK.shape[0])
    ]

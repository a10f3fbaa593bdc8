"""`saev visuals`: top-k images per latent, saved as data and as a browsable static gallery."""

import dataclasses
import html
import logging
import math
import pathlib
import shlex
from collections import defaultdict
from typing import Literal

import numpy as np
import torch
import tqdm
from PIL import Image
from safetensors.torch import save

from saev import distributed
from saev.activations import provenance
from saev.activations.families import make_img_transform
from saev.activations.transforms import visible_crop
from saev.data.store import ShardStore, open_shards
from saev.errors import ConfigError, ModelError, StoreError
from saev.fileio import OutputFolder, atomic_open, canonical_safetensors, save_image, write_json
from saev.nn import checkpoints
from saev.nn.evaluation import DEAD_DEFINITION, DENSE_DEFINITION, dead_and_dense
from saev.options import available_memory, size_text
from saev.visuals import gallery
from saev.visuals.heatmap import placeholder, spotlight
from saev.visuals.lookup import ImageLookup
from saev.visuals.topk import HIST_BINS, HIST_EDGES, TopActivations, log_freq, top_activations

logger = logging.getLogger("saev.visuals")
THUMB = 224


@dataclasses.dataclass(frozen=True)
class VisualsConfig:
    """Find each latent's maximally activating images and build a static HTML gallery of them."""

    sae: str
    """SAE checkpoint: a path, hf://ORG/NAME or hf://ORG/NAME/FILE."""
    shards: pathlib.Path
    """Activation store the SAE reads."""
    out: OutputFolder = pathlib.Path("visuals")
    """Folder for topk.safetensors, latents.json and the gallery (index.html)."""
    layer: int | None = None
    """Layer of the store the SAE reads (default: the one it was trained on)."""
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
    force: bool = False
    """Read a layer, model or token selection other than the SAE was trained on."""


@dataclasses.dataclass(frozen=True)
class VisualsResult:
    index: pathlib.Path
    rendered: list[int]
    n_missing_images: int
    """Images drawn as placeholders (0 on the ranks other than 0 of a torchrun job: they draw nothing)."""


def make_visuals(
    cfg: VisualsConfig,
    notes: dict[int, str] | None = None,
    figures: dict[int, list[gallery.Figure]] | None = None,
    links: dict[str, str] | None = None,
) -> VisualsResult:
    """`notes` annotate latents in the index and on their pages (e.g. the concept a latent detects);
    `figures` (files already in the output folder) are shown on their latents' pages; `links`
    (text -> address relative to the gallery) are listed on the index, e.g. the SAE's scorecard."""
    if cfg.top_k < 1 or cfg.n_latents < 0:
        raise ConfigError(f"--top-k must be >= 1 and --n-latents >= 0 (got {cfg.top_k}, {cfg.n_latents}).")
    lo, hi = cfg.log_freq_range
    if not lo <= hi or lo > 0:
        raise ConfigError(
            f"--log-freq-range {lo:g} {hi:g} selects nothing: give LOW <= HIGH, with LOW <= 0 "
            "(log10 firing frequencies lie in (-inf, 0])."
        )
    sae = checkpoints.load(cfg.sae)
    store = open_shards(cfg.shards)
    bad = [s for s in cfg.latents if not 0 <= s < sae.cfg.d_sae]
    if bad:
        raise ConfigError(f"--latents {bad} out of range: the SAE has {sae.cfg.d_sae} latents.")
    if cfg.layer is None:
        cfg = dataclasses.replace(cfg, layer=provenance.default_layer(sae.provenance, store, cfg.sae))
    tokens = "cls" if cfg.sort_by == "cls" else "patches"
    reading = provenance.store_reading(store, cfg.layer, tokens)
    provenance.check(sae.provenance, reading, force=cfg.force, where=cfg.sae)
    _check_memory(cfg, sae.cfg.d_sae, store)
    lookup = ImageLookup(store, cfg.images)
    if sae.normalization is None:
        logger.warning(
            "%s carries no normalisation statistics; codes assume its inputs are already normalised (see `saev normalize`).",
            cfg.sae,
        )
    top = top_activations(sae, store, cfg.layer, cfg.top_k, cfg.sort_by, device=cfg.device)
    chosen = _choose(cfg, top)
    if not distributed.current().main:
        # Under torchrun every rank streamed its share of the store and holds the merged result;
        # rank 0 writes the files alone.
        return VisualsResult(cfg.out / "index.html", chosen, 0)
    cfg.out.mkdir(parents=True, exist_ok=True)
    notes = notes or {}
    _save_data(cfg, top, chosen, lookup, notes)
    grid = _grid(store)
    pages = [
        dataclasses.replace(page, figures=(figures or {}).get(page.latent, []))
        for page in _render(cfg, top, chosen, lookup, store, grid, notes)
    ]
    n_images = {page.latent: len(page.images) for page in pages}
    rows = [
        row
        | {
            "page": row["latent"] in n_images,
            "note": notes.get(row["latent"], ""),
            "n_images": n_images.get(row["latent"], 0),
        }
        for row in _stat_rows(top)
    ]
    for i, page in enumerate(pages):
        prev_id = pages[i - 1].latent if i else None
        next_id = pages[i + 1].latent if i + 1 < len(pages) else None
        gallery.write_latent_page(cfg.out, page, prev_id, next_id, cfg.sort_by)
    meta = store.meta
    subtitle = f"{cfg.sae} on {meta.vit_family}/{meta.vit_ckpt} layer {cfg.layer}, {len(store):,} images."
    # Links first: below the render command they sit off the first screen.
    about = "".join(
        f'<p><a href="{html.escape(href)}">{html.escape(text)}</a></p>'
        for text, href in (links or {}).items()
    ) + _about(cfg, rows, chosen, notes, top.stats.n_tokens)
    index = gallery.write_index(cfg.out, rows, "SAE latents", subtitle, about, thumb_size(grid))
    if lookup.missing:
        logger.warning("%d image(s) could not be found or read; drawn as placeholders", len(lookup.missing))
    if not chosen and cfg.n_latents > 0:
        # The top-k pass and the index are written (they are the expensive part); the pages asked for are not.
        raise ConfigError(f"no latent has a page: {_nothing_rendered(cfg, rows)} The index is {index}.")
    return VisualsResult(index, chosen, len(lookup.missing))


def _check_memory(cfg: VisualsConfig, d_sae: int, store: ShardStore) -> None:
    """Refuse a top-k pass whose state cannot fit on its device, before allocating it.

    The tracker keeps every latent's K patch maps; its update, the copy to the CPU and (under
    torchrun) every rank's gathered tracker hold more copies of them."""
    available = available_memory(cfg.device)
    if available is None:
        return
    free, what = available
    maps = d_sae * cfg.top_k * (store.meta.n_patches_per_img * 4 + 16)
    need = (2 + distributed.current().size) * maps + d_sae * HIST_BINS * 8
    if need <= free:
        return
    raise ConfigError(
        f"--top-k {cfg.top_k}: keeping {cfg.top_k} images with their {store.meta.n_patches_per_img} patch "
        f"activations for each of {d_sae:,} latents needs at least {size_text(need)} on {cfg.device}, but it has "
        f"{size_text(free)} of {what}; lower --top-k."
    )


def _nothing_rendered(cfg: VisualsConfig, rows: list[dict]) -> str:
    live = [r["log10_freq"] for r in rows if not r["dead"]]
    if not live:
        return "every latent is dead on this store."
    lo, hi = cfg.log_freq_range
    return (
        f"none of the {len(live):,} live latents has log10 frequency in [{lo:g}, {hi:g}] "
        f"(they span [{min(live):.2f}, {max(live):.2f}]; see --log-freq-range)."
    )


def _about(
    cfg: VisualsConfig, rows: list[dict], chosen: list[int], notes: dict[int, str], n_tokens: int
) -> str:
    """HTML for the index: which latents have pages, why, and the command that renders others."""
    live = [r["latent"] for r in rows if not r["dead"]]
    if cfg.latents:
        noted = sum(s in notes for s in chosen)
        why = "the latents asked for with <code>--latents</code>" + (
            f", {noted} of them annotated (shown first)" if noted else ""
        )
    else:
        lo, hi = cfg.log_freq_range
        in_range = sum(lo <= r["log10_freq"] <= hi for r in rows if not r["dead"])
        span = "" if (lo, hi) == (-math.inf, 0.0) else f" with log10 frequency in [{lo:g}, {hi:g}]"
        why = (
            f"all {in_range:,} live latents{span}"
            if len(chosen) == in_range
            else f"a random sample (<code>--n-latents {cfg.n_latents}</code>, <code>--seed {cfg.seed}</code>) of the {in_range:,} live latents{span}"
        )
    rendered = set(chosen)
    example = [s for s in live if s not in rendered][:2] or [0]
    flags = {"sae": cfg.sae, "shards": cfg.shards, "layer": cfg.layer, "out": cfg.out}
    # Options that change the pages are repeated when not at their defaults, so the new pages match.
    flags |= {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name in ("top_k", "sort_by", "images") and getattr(cfg, f.name) != f.default
    }
    words = [w for name, value in flags.items() for w in (f"--{name.replace('_', '-')}", str(value))]
    command = html.escape(shlex.join(["saev", "visuals", *words, "--latents", *map(str, example)]))
    n_dead, n_dense = len(rows) - len(live), sum(r["dense"] for r in rows)
    dead = (
        f" {n_dead:,} dead and {n_dense:,} dense ({DEAD_DEFINITION} (here all {n_tokens:,} tokens of the store); "
        f"{DENSE_DEFINITION}); dead latents have no page."
    )
    return (
        f"<p><strong>{len(chosen):,} of {len(rows):,} latents have pages</strong>: {why}. They are listed first.{dead}</p>"
        f'<p>Render others with</p><code class="cmd">{command}</code><p>listing every latent you want a page for, '
        "or with <code>--n-latents N</code> in place of <code>--latents</code> for a larger random sample of live latents.</p>"
    )


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
        f.write(canonical_safetensors(save(tensors, metadata=meta)))
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
    heatmaps = cfg.sort_by != "cls"  # ranked by [CLS], the images have no per-patch map to draw
    for i in tqdm.tqdm(sorted(by_image), unit="img", desc="drawing", dynamic_ncols=True):
        img = lookup.load(i)
        base = crop(img) if img is not None else placeholder(size, f"missing: {lookup.path(i)}")
        for s, r in by_image[i]:
            folder = cfg.out / "thumbs" / str(s)
            # <r>.jpg is what the index cards show: the heatmap when there is one, else the crop.
            tile = (
                base
                if img is None or not heatmaps
                else spotlight(base, top.patch_maps_SKP[s, r].numpy(), grid, vmax[s])
            )
            save_image(folder / f"{r}.jpg", tile, quality=82, optimize=True)
            save_image(folder / f"{r}.orig.jpg", base, quality=82, optimize=True)
    edges = HIST_EDGES.tolist()
    pages = []
    for s in chosen:
        images = [
            gallery.TopImage(
                r,
                i,
                float(top.values_SK[s, r]),
                f"thumbs/{s}/{r}.orig.jpg",
                f"thumbs/{s}/{r}.jpg" if heatmaps and i not in lookup.missing else None,
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
                vmax[s] if heatmaps else None,
            )
        )
    return pages


def _stat_rows(top: TopActivations) -> list[dict]:
    """Each latent's statistics, as listed in latents.json and the gallery index."""
    lf = log_freq(top.stats.freq_S)
    dead_S, dense_S = dead_and_dense(top.stats.freq_S)
    return [
        {
            "latent": s,
            "freq": float(top.stats.freq_S[s]),
            "log10_freq": float(lf[s]) if np.isfinite(lf[s]) else None,
            "mean": float(top.stats.mean_S[s]),
            "max": float(top.stats.max_S[s]),
            "dead": bool(dead_S[s]),
            "dense": bool(dense_S[s]),
        }
        for s in range(top.values_SK.shape[0])
    ]

"""`saev visuals`: top-k images per latent, saved as data and as a browsable static gallery.

Besides each latent's top images, its pages show images sampled across its firing distribution
(the quantile strip), its nearest latents by decoder direction, the latents firing with it, and
its automatic name when given. Rendering into a folder that holds a gallery of the same SAE,
store, layer and ranking adds to it (see `make_visuals`)."""

import dataclasses
import hashlib
import html
import logging
import math
import pathlib
import shlex
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
import tqdm
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from saev import distributed
from saev.activations import provenance
from saev.activations.families import make_img_transform
from saev.activations.transforms import visible_crop
from saev.data.layout import Tokens
from saev.data.store import ShardStore, open_shards
from saev.errors import ConfigError, ModelError, StoreError
from saev.fileio import (
    OutputFolder,
    atomic_open,
    canonical_safetensors,
    check_input,
    existing_kind,
    read_json,
    save_image,
    write_json,
)
from saev.nn import SparseAutoencoder, checkpoints
from saev.nn.evaluation import DEAD_DEFINITION, DENSE_DEFINITION, dead_and_dense
from saev.options import available_memory, size_text
from saev.visuals import gallery, relations
from saev.visuals.gallery import Figure, HeadEffect, Name
from saev.visuals.heatmap import placeholder, spotlight
from saev.visuals.lookup import ImageLookup
from saev.visuals.topk import (
    HIST_BINS,
    HIST_EDGES,
    SAMPLE,
    TopActivations,
    hist_percentile,
    hist_quantile,
    log_freq,
    top_activations,
)

logger = logging.getLogger("saev.visuals")
THUMB = 224
Effects = Callable[[list[int], np.ndarray], dict[int, list[dict[str, Any]]]]
"""(latents, their mean activations when firing) -> each latent's effect on each head, as JSON."""


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
    """Save patch maps (of the top and the sampled images) of every latent in topk.safetensors, not only the rendered ones."""
    seed: int = 0
    """Seed of the latent sample."""
    device: str = "cpu"
    """Torch device for encoding."""
    force: bool = False
    """Read a layer, model or token selection other than the SAE was trained on."""
    overwrite: bool = False
    """Replace a gallery of another SAE, store, layer or ranking in --out (by default a run into a
    gallery of the same ones adds its pages to it, and any other is refused)."""


@dataclasses.dataclass(frozen=True)
class VisualsResult:
    index: pathlib.Path
    rendered: list[int]
    """Every latent with a page: those asked for and those the gallery already had."""
    n_missing_images: int
    """Images drawn as placeholders (0 on the ranks other than 0 of a torchrun job: they draw nothing)."""


def make_visuals(
    cfg: VisualsConfig,
    notes: dict[int, str] | None = None,
    figures: dict[int, list[Figure]] | None = None,
    links: dict[str, str] | None = None,
    names: dict[int, dict[str, Any] | None] | None = None,
    naming: dict[str, Any] | None = None,
    effects: Effects | None = None,
) -> VisualsResult:
    """`notes` annotate latents in the index and on their pages (e.g. the concept a latent detects);
    `figures` (files already in the output folder) are shown on their latents' pages; `links`
    (text -> address relative to the gallery) are listed on the index, e.g. the SAE's scorecard;
    `names` (latent -> its automatic name, None when it was scored and left unexplained) are shown
    on the cards and pages, and `naming` (how they were made) is kept in latents.json. `effects`
    gives the rendered latents' direct effects on heads (called with the latents and their mean
    activations when firing; see `saev.steering.lens`), shown on their pages.

    Rendering is additive: when `cfg.out` holds a gallery of the same SAE, store, layer and ranking,
    its pages stay (with their notes, figures and names; new ones given here replace them) and the
    latents asked for are added. A gallery of other ones is refused unless `cfg.overwrite`."""
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
    layer = cfg.layer if cfg.layer is not None else provenance.default_layer(sae.provenance, store, cfg.sae)
    cfg = dataclasses.replace(cfg, layer=layer)
    tokens: Tokens = "cls" if cfg.sort_by == "cls" else "patches"
    reading = provenance.store_reading(store, layer, tokens)
    provenance.check(sae.provenance, reading, force=cfg.force, where=cfg.sae)
    _check_memory(cfg, sae.cfg.d_sae, store)
    given = Kept(
        frozenset(),
        notes or {},
        figures or {},
        _checked_names(names or {}, sae.cfg.d_sae, "names"),
        links or {},
        naming,
    )
    identity = _identity(cfg, sae)
    # Before the pass, so a folder that would be refused costs nothing.
    kept = Kept() if cfg.overwrite else _kept(cfg.out, identity, sae.cfg.d_sae)
    lookup = ImageLookup(store, cfg.images)
    if sae.normalization is None:
        logger.warning(
            "%s carries no normalisation statistics; codes assume its inputs are already normalised (see `saev normalize`).",
            cfg.sae,
        )
    top = top_activations(sae, store, layer, cfg.top_k, cfg.sort_by, device=cfg.device)
    asked = _choose(cfg, top)
    chosen = sorted(set(asked) | kept.rendered)
    if not distributed.current().main:
        # Under torchrun every rank streamed its share of the store and holds the merged result;
        # rank 0 writes the files alone.
        return VisualsResult(cfg.out / "index.html", chosen, 0)
    cfg.out.mkdir(parents=True, exist_ok=True)
    merged = kept.updated(given)
    if effects is not None and chosen:
        found = effects(chosen, top.stats.mean_S[chosen].numpy())
        merged = dataclasses.replace(
            merged, effects=merged.effects | _checked_effects(found, "the head effects")
        )
    related = Relations(
        relations.neighbours(sae.W_dec, chosen),
        relations.cooccurrence(top.cooccur, sae.cfg.d_sae, chosen),
        top.cooccur.n_tokens,
    )
    _save_data(cfg, identity, top, chosen, lookup, merged, related)
    grid = _grid(store)
    pages = _render(cfg, top, chosen, lookup, store, grid, merged, related)
    n_images = {page.latent: len(page.images) for page in pages}
    rows = [
        row
        | {
            "page": row["latent"] in n_images,
            "note": merged.notes.get(row["latent"], ""),
            "n_images": n_images.get(row["latent"], 0),
        }
        | ({"name": merged.names[row["latent"]]} if row["latent"] in merged.names else {})
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
        f'<p><a href="{html.escape(href)}">{html.escape(text)}</a></p>' for text, href in merged.links.items()
    ) + _about(cfg, identity, rows, asked, chosen, merged.notes, top.stats.n_tokens, _heads(merged))
    index = gallery.write_index(cfg.out, rows, "SAE latents", subtitle, about, thumb_size(grid))
    if lookup.missing:
        logger.warning("%d image(s) could not be found or read; drawn as placeholders", len(lookup.missing))
    if not chosen and cfg.n_latents > 0:
        # The top-k pass and the index are written (they are the expensive part); the pages asked for are not.
        raise ConfigError(f"no latent has a page: {_nothing_rendered(cfg, rows)} The index is {index}.")
    return VisualsResult(index, chosen, len(lookup.missing))


@dataclasses.dataclass(frozen=True)
class Kept:
    """What a gallery carries from run to run besides what the pass recomputes."""

    rendered: frozenset[int] = frozenset()
    notes: dict[int, str] = dataclasses.field(default_factory=dict)
    figures: dict[int, list[Figure]] = dataclasses.field(default_factory=dict)
    names: dict[int, dict[str, Any] | None] = dataclasses.field(default_factory=dict)
    """Latent -> its name as given (None: scored, unexplained); latents never scored are absent."""
    links: dict[str, str] = dataclasses.field(default_factory=dict)
    naming: dict[str, Any] | None = None
    effects: dict[int, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    """Latent -> its effect on each head (`LatentLens.to_json()`)."""

    def updated(self, new: "Kept") -> "Kept":
        """These, with what `new` gives replacing them latent by latent."""
        return Kept(
            self.rendered | new.rendered,
            self.notes | new.notes,
            self.figures | new.figures,
            self.names | new.names,
            self.links | new.links,
            new.naming if new.naming is not None else self.naming,
            self.effects | new.effects,
        )


@dataclasses.dataclass(frozen=True)
class Relations:
    neighbours: relations.Related
    """By decoder-direction cosine."""
    cooccur: relations.Related
    """By P(other fires | this fires) over the pass's token sample."""
    cooccur_tokens: int


IDENTITY = {
    "sae": "SAE",
    "sae_digest": "SAE weights",
    "shards": "store",
    "layer": "layer",
    "sort_by": "--sort-by",
}
"""What makes two runs into one folder the same gallery (topk.safetensors metadata key -> words);
galleries written before the digest was kept are compared by the SAE's path."""


def _identity(cfg: VisualsConfig, sae: SparseAutoencoder) -> dict[str, str]:
    digest = hashlib.blake2b(digest_size=8)
    for key, value in sorted(sae.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return {
        "sae": _local(cfg.sae),
        "sae_digest": digest.hexdigest(),
        "shards": _local(str(cfg.shards)),
        "layer": str(cfg.layer),
        "sort_by": cfg.sort_by,
    }


def _local(spec: str) -> str:
    """An absolute path for a local file or folder (so the command printed on the index works from
    any folder); other specs (hf://..., catalogue names) as given."""
    path = pathlib.Path(spec).expanduser()
    return str(path.resolve()) if existing_kind(path) is not None else spec


def _kept(out: pathlib.Path, identity: dict[str, str], d_sae: int) -> Kept:
    """What the gallery already in `out` keeps; refuses one of another SAE, store, layer or ranking."""
    data, tensors = out / "latents.json", out / "topk.safetensors"
    if existing_kind(data) is None and existing_kind(tensors) is None:
        return Kept()
    replace = "give another --out, or --overwrite to replace it"
    try:
        with safe_open(str(check_input(tensors)), "pt") as f:
            meta = f.metadata() or {}
        rows = read_json(data, "list of latents")
        latents = rows["latents"]
    except (ConfigError, SafetensorError, OSError, KeyError, TypeError) as err:
        raise ConfigError(
            f"--out {out} holds a saev visuals gallery that cannot be read ({err}); {replace}."
        ) from None
    was = {key: meta.get(key) for key in IDENTITY}
    if was["shards"] is not None:
        was["shards"] = _local(was["shards"])
    differ = [
        f"{IDENTITY[key]} {was[key]} there, {identity[key]} now"
        for key in ("shards", "layer", "sort_by")
        if was[key] is not None and was[key] != identity[key]
    ]
    # The same weights are the same SAE wherever they are now; other weights at the same path are not.
    if was["sae_digest"] is not None and was["sae_digest"] != identity["sae_digest"]:
        differ.insert(
            0,
            f"the SAE {identity['sae']} has other weights than when it was made"
            if was["sae"] == identity["sae"]
            else f"SAE {was['sae']} there, {identity['sae']} now",
        )
    elif was["sae_digest"] is None and was["sae"] is not None and _local(was["sae"]) != identity["sae"]:
        differ.insert(0, f"SAE {was['sae']} there, {identity['sae']} now")
    if isinstance(latents, list) and len(latents) != d_sae:
        differ.append(f"{len(latents)} latents there, {d_sae} now")
    if differ:
        raise ConfigError(
            f"--out {out} holds the gallery of another SAE, store, layer or ranking ({'; '.join(differ)}): "
            f"this run would replace its pages; {replace}."
        )
    where = str(data)
    try:
        figures = {
            r["latent"]: [Figure(f["src"], f["title"], f["caption"]) for f in r.get("figures", [])]
            for r in latents
            if r.get("figures")
        }
        return Kept(
            frozenset(r["latent"] for r in latents if r["rendered"]),
            {r["latent"]: r["note"] for r in latents if r.get("note")},
            figures,
            _checked_names({r["latent"]: r["name"] for r in latents if "name" in r}, d_sae, where),
            dict(rows.get("links", {})),
            rows.get("naming"),
            _checked_effects({r["latent"]: r["effects"] for r in latents if r.get("effects")}, where),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ConfigError(
            f"{where}: not a saev visuals list of latents ({type(err).__name__}: {err}); {replace}."
        ) from None


def _checked_effects(effects: dict[int, list[dict[str, Any]]], where: str) -> dict[int, list[dict[str, Any]]]:
    """`effects` after checking each reads as `gallery.HeadEffect`s (raising ConfigError naming `where`)."""
    for s, found in effects.items():
        for e in found:
            HeadEffect.from_json(e, f"{where}: latent {s}")
    return dict(effects)


def _checked_names(
    names: dict[int, dict[str, Any] | None], d_sae: int, where: str
) -> dict[int, dict[str, Any] | None]:
    """`names` after checking each is None or a name `gallery.Name` reads (raising ConfigError naming `where`)."""
    for s, name in names.items():
        if not (isinstance(s, int) and 0 <= s < d_sae):
            raise ConfigError(f"{where}: latent {s!r} out of range: the SAE has {d_sae} latents.")
        if name is not None:
            Name.from_json(name, f"{where}: latent {s}")
    return dict(names)


def _check_memory(cfg: VisualsConfig, d_sae: int, store: ShardStore) -> None:
    """Refuse a top-k pass whose state cannot fit on its device, before allocating it.

    The tracker keeps every latent's K patch maps; its update, the copy to the CPU and (under
    torchrun) every rank's gathered tracker hold more copies of them."""
    available = available_memory(cfg.device)
    if available is None:
        return
    free, what = available
    maps = d_sae * (cfg.top_k + SAMPLE) * (store.meta.n_patches_per_img * 4 + 16)
    need = (2 + distributed.current().size) * maps + 2 * d_sae * HIST_BINS * 8
    if need <= free:
        return
    raise ConfigError(
        f"--top-k {cfg.top_k}: keeping {cfg.top_k} top images and {SAMPLE} sampled ones with their "
        f"{store.meta.n_patches_per_img} patch activations for each of {d_sae:,} latents needs at least {size_text(need)} on {cfg.device}, but it has "
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
    cfg: VisualsConfig,
    identity: dict[str, str],
    rows: list[dict],
    asked: list[int],
    chosen: list[int],
    notes: dict[int, str],
    n_tokens: int,
    heads: list[str],
) -> str:
    """HTML for the index: which latents have pages, why, and the command that adds others (with
    the `heads` whose effects the pages show, so the new pages show them too)."""
    live = [r["latent"] for r in rows if not r["dead"]]
    if cfg.latents:
        noted = sum(s in notes for s in asked)
        why = "the latents asked for with <code>--latents</code>" + (
            f", {noted} of them annotated (shown first)" if noted else ""
        )
    else:
        lo, hi = cfg.log_freq_range
        in_range = sum(lo <= r["log10_freq"] <= hi for r in rows if not r["dead"])
        span = "" if (lo, hi) == (-math.inf, 0.0) else f" with log10 frequency in [{lo:g}, {hi:g}]"
        why = (
            f"all {in_range:,} live latents{span}"
            if len(asked) == in_range
            else f"a random sample (<code>--n-latents {cfg.n_latents}</code>, <code>--seed {cfg.seed}</code>) of the {in_range:,} live latents{span}"
        )
    earlier = len(set(chosen) - set(asked))
    if earlier:
        why += f", and {earlier:,} more rendered into this folder by earlier runs"
    rendered = set(chosen)
    dense = {r["latent"] for r in rows if r["dense"]}
    unrendered = [s for s in live if s not in rendered]
    example = ([s for s in unrendered if s not in dense] + [s for s in unrendered if s in dense])[:2] or [0]
    # Absolute paths, so the command works from any folder, and the same gallery it adds to.
    flags = {
        "sae": identity["sae"],
        "shards": identity["shards"],
        "layer": cfg.layer,
        "out": cfg.out.expanduser().resolve(),
    }
    # Options that change the pages are repeated when not at their defaults, so the new pages match.
    flags |= {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name in ("top_k", "sort_by", "images") and getattr(cfg, f.name) != f.default
    }
    words = [w for name, value in flags.items() for w in (f"--{name.replace('_', '-')}", str(value))]
    words += ["--head", *heads] if heads else []
    command = html.escape(shlex.join(["saev", "visuals", *words, "--latents", *map(str, example)]))
    n_dead, n_dense = len(rows) - len(live), len(dense)
    dead = (
        f" {n_dead:,} dead and {n_dense:,} dense ({DEAD_DEFINITION} (here all {n_tokens:,} tokens of the store); "
        f"{DENSE_DEFINITION}); dead latents have no page, dense ones are marked and hidden from the cards unless "
        "<em>show dense</em> is ticked."
    )
    return (
        f"<p><strong>{len(chosen):,} of {len(rows):,} latents have pages</strong>: {why}. They are listed first.{dead}</p>"
        f'<p>Add pages for others with</p><code class="cmd">{command}</code><p>listing the latents you want, '
        "or with <code>--n-latents N</code> in place of <code>--latents</code> to add a random sample of live latents. "
        "It adds to this gallery: the pages here stay, with their notes, names and figures.</p>"
    )


def _heads(kept: Kept) -> list[str]:
    """The heads whose effects the gallery's pages show, in the order first given."""
    return list(dict.fromkeys(e["head"] for found in kept.effects.values() for e in found))


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
    cfg: VisualsConfig,
    identity: dict[str, str],
    top: TopActivations,
    chosen: list[int],
    lookup: ImageLookup,
    kept: Kept,
    related: Relations,
) -> None:
    mapped = list(range(top.values_SK.shape[0])) if cfg.all_maps else chosen
    tensors = {
        "values": top.values_SK.float(),
        "image_i": top.image_i_SK,
        "patch_maps": top.patch_maps_SKP[mapped].float().contiguous(),
        "patch_map_latents": torch.tensor(mapped, dtype=torch.int64),
        "quantile_values": top.sample_values_SM.float(),
        "quantile_image_i": top.sample_image_i_SM,
        "quantile_maps": top.sample_maps_SMP[mapped].float().contiguous(),
        "freq": top.stats.freq_S.float(),
        "mean": top.stats.mean_S,
        "max": top.stats.max_S,
        "hist": top.stats.hist_SB,
        "image_hist": top.stats.img_hist_SB,
        "hist_edges": HIST_EDGES,
        "related_latents": torch.tensor(chosen, dtype=torch.int64),
        "neighbours": related.neighbours.others_RK,
        "neighbour_cosine": related.neighbours.values_RK.float(),
        "cooccur": related.cooccur.others_RK,
        "cooccur_p": related.cooccur.values_RK.float(),
    }
    meta = identity | {"n_tokens": str(top.stats.n_tokens), "cooccur_tokens": str(related.cooccur_tokens)}
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
        entry = row | {
            "rendered": s in rendered,
            "note": kept.notes.get(s, ""),
            "figures": [dataclasses.asdict(f) for f in kept.figures.get(s, [])] if s in rendered else [],
            "top": images,
            "quantiles": [
                {
                    "image_i": q.image_i,
                    "value": q.value,
                    "percentile": q.percentile,
                    "source": lookup.path(q.image_i),
                    "label": q.label,
                }
                for q in _strip(top, s, lookup)
            ],
        }
        if s in kept.names:
            entry["name"] = kept.names[s]
        if s in rendered and s in kept.effects:
            entry["effects"] = kept.effects[s]
        if s in rendered:
            entry["neighbours"] = [{"latent": o, "cosine": v} for o, v in related.neighbours.of(s)]
            entry["cooccur"] = [{"latent": o, "p": v} for o, v in related.cooccur.of(s)]
        latents.append(entry)
    data: dict[str, Any] = {
        "sort_by": cfg.sort_by,
        "n_tokens": top.stats.n_tokens,
        "cooccur_tokens": related.cooccur_tokens,
        "links": kept.links,
    }
    if kept.naming is not None:
        data["naming"] = kept.naming
    write_json(cfg.out / "latents.json", data | {"latents": latents}, indent=None)


@dataclasses.dataclass(frozen=True)
class _Sampled:
    slot: int
    image_i: int
    value: float
    percentile: float
    """Its score's percentile among the images where the latent fires (from the image histogram)."""
    label: str | None


def _strip(top: TopActivations, s: int, lookup: ImageLookup) -> list[_Sampled]:
    """Latent `s`'s sampled images, by ascending score."""
    hist_B = top.stats.img_hist_SB[s]
    return [
        _Sampled(j, i, v, round(hist_percentile(hist_B, v), 1), lookup.describe(i).get("label"))
        for j, (i, v) in enumerate(
            zip(top.sample_image_i_SM[s].tolist(), top.sample_values_SM[s].tolist(), strict=True)
        )
        if i >= 0
    ]


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
        return lambda img: visible_crop(transform, img).resize(size, Image.Resampling.BICUBIC)
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
            return img.crop((left, top, left + w, top + h)).resize(size, Image.Resampling.BICUBIC)

        return centre


def _render(
    cfg: VisualsConfig,
    top: TopActivations,
    chosen: list[int],
    lookup: ImageLookup,
    store: ShardStore,
    grid: tuple[int, int],
    kept: Kept,
    related: Relations,
) -> list[gallery.LatentPage]:
    """Draw every (latent, rank) and (latent, sampled slot) thumbnail, decoding each source image once."""
    size = thumb_size(grid)
    crop = _crop_fn(store, size)
    strips = {s: _strip(top, s, lookup) for s in chosen}
    # Per image: (latent, top-k rank) and (latent, sample slot) tiles, drawn from one decoded image.
    top_at: dict[int, list[tuple[int, int]]] = defaultdict(list)
    sampled_at: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for s in chosen:
        for r, i in enumerate(top.image_i_SK[s].tolist()):
            if i >= 0:
                top_at[i].append((s, r))
        for q in strips[s]:
            sampled_at[q.image_i].append((s, q.slot))
    vmax = {s: float(top.patch_maps_SKP[s].max()) for s in chosen}
    for s in chosen:
        (cfg.out / "thumbs" / str(s)).mkdir(parents=True, exist_ok=True)
    heatmaps = cfg.sort_by != "cls"  # ranked by [CLS], the images have no per-patch map to draw
    for i in tqdm.tqdm(
        sorted(top_at.keys() | sampled_at.keys()), unit="img", desc="drawing", dynamic_ncols=True
    ):
        img = lookup.load(i)
        base = crop(img) if img is not None else placeholder(size, f"missing: {lookup.path(i)}")
        for s, r in top_at.get(i, []):
            folder = cfg.out / "thumbs" / str(s)
            # <r>.jpg is what the index cards show: the heatmap when there is one, else the crop.
            tile = (
                base
                if img is None or not heatmaps
                else spotlight(base, top.patch_maps_SKP[s, r].numpy(), grid, vmax[s])
            )
            save_image(folder / f"{r}.jpg", tile, quality=82, optimize=True)
            save_image(folder / f"{r}.orig.jpg", base, quality=82, optimize=True)
        for s, j in sampled_at.get(i, []):
            # Each on its own scale: a weak example would be all shadow on the top images' scale.
            tile = (
                base
                if img is None or not heatmaps
                else spotlight(base, top.sample_maps_SMP[s, j].numpy(), grid)
            )
            save_image(cfg.out / "thumbs" / str(s) / f"q{j}.jpg", tile, quality=82, optimize=True)
    edges = HIST_EDGES.tolist()
    dense_S = dead_and_dense(top.stats.freq_S)[1]
    linked = set(chosen)
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
        hist_B = top.stats.img_hist_SB[s]
        strip = gallery.Strip(
            [
                gallery.StripImage(
                    q.image_i,
                    q.value,
                    q.percentile,
                    f"thumbs/{s}/q{q.slot}.jpg",
                    size,
                    lookup.path(q.image_i),
                    q.label,
                    q.image_i in lookup.missing,
                )
                for q in strips[s]
            ],
            int(hist_B.sum()),
            [hist_quantile(hist_B, d / 10) for d in range(1, 10)],
        )
        st = top.stats
        pages.append(
            gallery.LatentPage(
                s,
                kept.notes.get(s, ""),
                float(st.freq_S[s]),
                float(st.mean_S[s]),
                float(st.max_S[s]),
                st.n_tokens,
                st.hist_SB[s].tolist(),
                edges,
                images,
                vmax[s] if heatmaps else None,
                [f for f in kept.figures.get(s, []) if existing_kind(cfg.out / f.src) is not None],
                strip=strip,
                neighbours=[gallery.Relation(o, v, o in linked) for o, v in related.neighbours.of(s)],
                cooccur=[gallery.Relation(o, v, o in linked) for o, v in related.cooccur.of(s)],
                cooccur_tokens=related.cooccur_tokens,
                scored=s in kept.names,
                name=Name.from_json(kept.names[s], f"latent {s}") if kept.names.get(s) is not None else None,
                dense=bool(dense_S[s]),
                effects=[HeadEffect.from_json(e, f"latent {s}") for e in kept.effects.get(s, [])],
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

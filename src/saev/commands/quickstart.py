"""`saev quickstart`: the whole pipeline, offline, on the built-in ViT and synthetic concept images.

Generates images with known concepts, records the built-in ViT's activations, trains a TopK SAE,
builds the feature gallery, and scores how well the SAE's best latent for each concept detects
it patch by patch, beside the best single ViT neuron. With --images/--vit-family/--vit-ckpt it
runs the same pipeline on the user's images and model (no concept table then).
"""

import dataclasses
import logging
import pathlib
import statistics
import sys
import time
from typing import TYPE_CHECKING, TextIO

import numpy as np
import torch
from PIL import Image

from saev import builtin, concepts, synthetic
from saev.activations.families import FamilyName, make_img_transform, make_vit
from saev.activations.recording import RecordConfig, record
from saev.activations.transforms import visible_crop
from saev.commands.base import Command
from saev.commands.train import plot_runs
from saev.data.store import ShardStore, open_shards
from saev.errors import ConfigError
from saev.explorer.lens import lens_effects
from saev.explorer.pictures import edit_picture
from saev.fileio import OutputFolder, existing_kind, read_json, save_image, write_json
from saev.naming.settings import NamingSettings
from saev.nn import checkpoints
from saev.steering import effects, inputs
from saev.steering.edits import Edit
from saev.steering.heads import builtin_head
from saev.steering.reconstruction import evaluate_splice
from saev.steering.splice import SplicedVit
from saev.training import RunResult, TrainConfig, train
from saev.visuals import VisualsConfig, make_visuals
from saev.visuals.gallery import Figure

if TYPE_CHECKING:
    from saev.naming.names import Naming

logger = logging.getLogger("saev.quickstart")
MIN_IMAGES = 100


@dataclasses.dataclass(frozen=True)
class Config:
    """Run the whole pipeline offline: images, activations, a TopK SAE, the gallery and a concept report."""

    out: OutputFolder = pathlib.Path("quickstart")
    """Folder for everything the run makes (reruns reuse finished steps)."""
    images: str | None = None
    """Your own images (folder or hf:NAME:SPLIT) instead of generated concept images."""
    vit_family: FamilyName = "builtin"
    """ViT family (see `saev activations --help`)."""
    vit_ckpt: str | None = None
    """ViT checkpoint (default: the built-in ViT)."""
    layer: int = -2
    """Block whose activations are recorded and read by the SAE."""
    n_images: int = 3000
    """Generated images (without --images)."""
    exp_factor: int = 8
    """SAE width as a multiple of the ViT width."""
    k: int = 16
    """Active latents per patch."""
    n_train: int = 3_000_000
    """SAE training tokens."""
    batch_size: int = 1024
    """SAE batch size in tokens."""
    lr: float = 1e-3
    """SAE learning rate."""
    n_latents: int = 60
    """Latents drawn in the gallery (the concept detectors first)."""
    seed: int = 0
    """Seed of the images, the SAE and the data order."""
    device: str = "cpu"
    """Torch device."""


@dataclasses.dataclass(frozen=True)
class Result:
    gallery: pathlib.Path
    report: pathlib.Path
    sae: pathlib.Path
    concepts: list[dict]
    splice: dict[str, dict]
    """Spliced evaluation per head (`saev evaluate`)."""
    steering: dict[str, dict]
    """Steering test per head (`saev steer --evaluate`)."""
    scorecard: pathlib.Path | None = None
    """The SAE's `saev bench` page (built-in world only)."""
    names: tuple[pathlib.Path, int, int] | None = None
    """`saev label`'s names.json, latents named, latents (None when the images offer no candidate)."""


def run(cfg: Config) -> Result:
    started = time.perf_counter()
    synthetic_run = cfg.images is None
    if synthetic_run and cfg.vit_family != "builtin":
        raise ConfigError(
            "without --images the quickstart uses the built-in ViT; give --images to use another model."
        )
    ckpt = cfg.vit_ckpt or (builtin.DEFAULT if cfg.vit_family == "builtin" else None)
    if ckpt is None:
        raise ConfigError(f"--vit-family {cfg.vit_family} needs --vit-ckpt.")
    _check(cfg)
    images = _generate(cfg) if cfg.images is None else cfg.images
    store = _record(cfg, images, ckpt)
    run_result = _train(cfg, store.path)
    scores = _score_concepts(cfg, store, run_result) if synthetic_run else []
    splice, steering, figures = (
        _splice_and_steer(cfg, store, run_result, scores, ckpt) if synthetic_run else ({}, {}, {})
    )
    scorecard = _bench(cfg, store, run_result)
    links = {"The SAE's scorecard (saev bench)": "../bench/index.html"} if scorecard else {}
    naming = _names(cfg, store, run_result)
    gallery = _visuals(cfg, store.path, run_result, scores, figures, links, naming)
    named = (cfg.out / "names.json", naming.n_named, len(naming.names)) if naming else None
    report = {
        "store": str(store.path),
        "sae": str(run_result.checkpoint),
        "gallery": str(gallery),
        "eval": run_result.eval.summary() if run_result.eval else None,
        "concepts": scores,
        "splice": splice,
        "steering": steering,
        "scorecard": scorecard,
        "names": {"file": str(named[0]), "named": named[1], "latents": named[2]} if named else None,
        "seconds": time.perf_counter() - started,
    }
    if scores:
        report["median_f1"] = {
            "sae": statistics.median(r["latent"]["f1"] for r in scores),
            "neuron": statistics.median(r["neuron"]["f1"] for r in scores),
        }
    write_json(cfg.out / "report.json", report)
    page = pathlib.Path(scorecard["page"]) if scorecard else None
    return Result(
        gallery, cfg.out / "report.json", run_result.checkpoint, scores, splice, steering, page, named
    )


def _generate(cfg: Config) -> str:
    root = cfg.out / "images"
    size = builtin.config(builtin.DEFAULT).img_size
    labels = root / "labels.json"
    if existing_kind(labels) is not None:
        meta = read_json(labels, "labels file")
        if (
            isinstance(meta, dict)
            and meta.get("seed") == cfg.seed
            and len(meta.get("images", [])) == cfg.n_images
        ):
            return str(root / "images")
    logger.info("generating %d concept images", cfg.n_images)
    synthetic.generate(root, cfg.n_images, seed=cfg.seed, size=size)
    return str(root / "images")


def _record(cfg: Config, images: str, ckpt: str) -> ShardStore:
    result = record(
        RecordConfig(
            vit_family=cfg.vit_family,
            vit_ckpt=ckpt,
            images=images,
            dump_to=cfg.out / "shards",
            layers=(cfg.layer,),
            n_workers=1,
            device=cfg.device,
        )
    )
    return open_shards(result.path)


def _train(cfg: Config, shards: pathlib.Path) -> RunResult:
    [result] = train(_train_config(cfg, shards))
    plot_runs([result])
    return result


def _check(cfg: Config) -> None:
    """The options' checks, before images are generated or recorded."""
    if cfg.images is None and cfg.n_images < MIN_IMAGES:
        raise ConfigError(
            f"--n-images must be at least {MIN_IMAGES} (10% are held out to score the concepts), got {cfg.n_images}."
        )
    if cfg.k < 1 or cfg.n_latents < 0:
        raise ConfigError(f"--k must be positive and --n-latents >= 0, got {cfg.k} and {cfg.n_latents}.")
    _train_config(cfg, cfg.out / "shards").validate()


def _train_config(cfg: Config, shards: pathlib.Path) -> TrainConfig:
    return TrainConfig(
        shards=shards,
        out=cfg.out / "runs",
        layer=cfg.layer,
        arch="topk",
        k=cfg.k,
        exp_factor=cfg.exp_factor,
        n_train=cfg.n_train,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        lr_warmup=100,
        holdout=0.1,
        seed=cfg.seed,
        data_seed=cfg.seed,
        device=cfg.device,
        resume=True,
    )


def _score_concepts(cfg: Config, store: ShardStore, run_result: RunResult) -> list[dict]:
    sae = checkpoints.load(run_result.checkpoint).to(cfg.device).eval()
    dataset = synthetic.load(cfg.out / "images")
    scores = concepts.score_store(sae, store, cfg.layer, dataset, holdout=0.1, device=cfg.device)
    return [score.to_dict() for score in scores]


def _splice_and_steer(
    cfg: Config, store: ShardStore, run_result: RunResult, scores: list[dict], ckpt: str
) -> tuple[dict[str, dict], dict[str, dict], dict[int, list[Figure]]]:
    """On the held-out images: the SAE spliced into the built-in ViT (both heads), and each concept's
    best latent suppressed where it fires, scored on the images its latent was not chosen on; a
    before/after picture per concept for the gallery."""
    sae = checkpoints.load(run_result.checkpoint, device=cfg.device).eval()
    vit = make_vit("builtin", ckpt).to(cfg.device)
    spliced, transform = SplicedVit(vit, sae, cfg.layer), make_img_transform("builtin", ckpt)
    heads = [builtin_head(vit, "patch"), builtin_head(vit, "image")]
    root = pathlib.Path(store.image_source["root"])
    n = len(store)
    paths = [root / store.images[i]["path"] for i in range(n - max(2, int(np.ceil(0.1 * n))), n)]
    labels = inputs.labels_for(paths, synthetic.CONCEPTS, vit.layout.grid)
    assert labels is not None  # a saev.synthetic folder labels every image and patch

    def batches(chosen: list[pathlib.Path]):
        return inputs.load_batches(chosen, transform, 64, {})

    position = {path: i for i, path in enumerate(paths)}
    splice = {}
    for head in heads:
        rows = labels.patch_NPC if head.kind == "patch" else labels.image_NC
        assert rows is not None
        labelled = ((b.x_B3HW, rows[[position[p] for p in b.paths]].float()) for b in batches(paths))
        splice[head.name] = evaluate_splice(spliced, head, labelled).to_dict()
    scoring = paths[1::2]  # detectors were chosen on the even held-out images
    max_S = inputs.max_over(spliced, (b.x_B3HW for b in batches(paths)))
    targets = [(c, row["latent"]["unit"]) for c, row in enumerate(scores)]
    tests = effects.steering_test(
        spliced, heads, (b.x_B3HW for b in batches(scoring)), targets, max_S, seed=cfg.seed
    )
    steering = {t.head: t.to_dict() for t in tests}
    figures = _steering_figures(cfg, spliced, heads[0], transform, scoring, targets, max_S)
    return splice, steering, figures


def _steering_figures(cfg, spliced, head, transform, paths, targets, max_S) -> dict[int, list[Figure]]:
    """For each concept's latent, the image where it fires most, before and after suppressing it."""
    batches = inputs.load_batches(paths, transform, 64, {})
    codes = torch.cat([spliced.prefix(b.x_B3HW).codes_BNS.amax(1).cpu() for b in batches])
    folder = cfg.out / "gallery" / "steering"
    folder.mkdir(parents=True, exist_ok=True)
    figures: dict[int, list[Figure]] = {}
    for c, latent in targets:
        i = int(codes[:, latent].argmax())
        img = Image.open(paths[i]).convert("RGB")
        prefix = spliced.prefix(transform(img)[None])
        edited = spliced.edit(prefix, [Edit(latent, "set", -1.0, relative=True)], where="active", max_S=max_S)
        delta_N = spliced.decode_delta(prefix.codes_BNS, edited).norm(dim=-1)[0]
        before = head.logits(spliced.finish(prefix.tokens_BTD))[0].cpu()
        after = head.logits(spliced.finish(spliced.tokens_with(prefix, edited)))[0].cpu()
        panels = edit_picture(head, visible_crop(transform, img), spliced, before, after, delta_N, shown=c)
        save_image(folder / f"{latent}.png", panels)
        caption = (
            f"{paths[i].name}: latent {latent} set to -1x its largest activation ({float(max_S[latent]):.3g}) where it "
            f"fires; patch-head top classes before and after (colours), {synthetic.CONCEPTS[c]} before and after "
            "(bright and outlined where predicted), and the patches whose predicted classes changed."
        )
        figures.setdefault(latent, []).append(
            Figure(f"steering/{latent}.png", f"Suppressing it ({synthetic.CONCEPTS[c]})", caption)
        )
    return figures


def _names(cfg: Config, store: ShardStore, run_result: RunResult) -> "Naming | None":
    """Every latent's automatic name (`saev label`), written to OUT/names.json; None when the
    images offer no candidate (the user's images without class folders)."""
    # Naming reads the scorecard's inputs, which import scikit-learn (1.8 s).
    from saev.naming.names import NothingToName, write_names
    from saev.naming.run import label

    try:
        naming = label(str(run_result.checkpoint), store, NamingSettings(seed=cfg.seed, device=cfg.device))
    except NothingToName as err:
        logger.info("latents left unnamed: %s", err)
        return None
    write_names(naming, cfg.out / "names.json")
    return naming


def _visuals(
    cfg: Config,
    shards: pathlib.Path,
    run_result: RunResult,
    scores: list[dict],
    figures: dict[int, list[Figure]],
    links: dict[str, str],
    naming: "Naming | None",
) -> pathlib.Path:
    """The gallery: pages for the concept detectors, then the other named latents, then a sample of
    the rest, up to --n-latents."""
    notes: dict[int, str] = {}
    for row in scores:
        lat = row["latent"]
        note = f"best detector of {row['concept']} (F1 {lat['f1']:.2f})"
        notes[lat["unit"]] = f"{notes[lat['unit']]}; {note}" if lat["unit"] in notes else note
    detectors = list(notes)
    freq = run_result.eval.freq if run_result.eval else []
    live = [s for s, f in enumerate(freq) if f > 0 and s not in detectors]
    rng = np.random.default_rng(cfg.seed)
    names = naming.as_dicts() if naming else {}
    named = [s for s in live if names.get(s) is not None]
    ordered = (
        rng.permutation(named).tolist() + rng.permutation([s for s in live if s not in set(named)]).tolist()
    )
    extra = ordered[: max(0, cfg.n_latents - len(set(detectors)))]
    latents = tuple(sorted(set(detectors) | {int(s) for s in extra}))
    visuals = VisualsConfig(
        sae=str(run_result.checkpoint),
        shards=shards,
        out=cfg.out / "gallery",
        layer=cfg.layer,
        top_k=12,
        overwrite=True,
        latents=latents,
        device=cfg.device,
    )
    # The built-in ViT's concept heads give each page a logit lens in the built-in world.
    effects = lens_effects(visuals, ("builtin-patch", "builtin-image")) if scores else None
    result = make_visuals(
        visuals,
        notes,
        figures,
        links,
        names=names or None,
        naming=naming.method if naming else None,
        effects=effects,
    )
    return result.index


def _bench(cfg: Config, store: ShardStore, run_result: RunResult) -> dict | None:
    """The SAE's scorecard (`saev bench`) in OUT/bench; None on the user's images without labels,
    where most of it would be skipped (run saev bench with a head and an evaluator there)."""
    if cfg.images is not None:
        return None
    # The metrics import scikit-learn (1.8 s), which the other commands should not pay for.
    from saev.bench import report as bench_report
    from saev.bench import run as bench_run

    card = bench_run.score(
        str(run_result.checkpoint), store, bench_run.BenchSettings(device=cfg.device, seed=cfg.seed)
    )
    bench_report.write([card], cfg.out / "bench", {"store": str(store.path)})
    return card.to_json() | {"page": str(cfg.out / "bench" / "index.html")}


def print_report(result: Result, file: TextIO | None = None) -> None:
    file = file or sys.stdout
    if result.concepts:
        steer = {r["class"]: r["edit"] for r in result.steering.get("builtin-patch", {}).get("classes", [])}
        print(
            f"{'concept':<18} {'best SAE latent':>15} {'F1':>5} {'prec':>5} {'rec':>5}   {'best ViT neuron':>15} {'F1':>5} {'prec':>5} {'rec':>5}   {'steer':>5} {'other':>5}",
            file=file,
        )
        for row in result.concepts:
            lat, neu = row["latent"], row["neuron"]
            neuron = f"{neu['unit']}{'+' if neu['sign'] > 0 else '-'}"
            rates = steer.get(row["concept"], {})
            print(
                f"{row['concept']:<18} {lat['unit']:>15} {lat['f1']:5.2f} {lat['precision']:5.2f} {lat['recall']:5.2f}   "
                f"{neuron:>15} {neu['f1']:5.2f} {neu['precision']:5.2f} {neu['recall']:5.2f}   "
                f"{effects.number(rates.get('target_rate'), '.2f'):>5} {effects.number(rates.get('other_rate'), '.2f'):>5}",
                file=file,
            )
        sae_f1 = [r["latent"]["f1"] for r in result.concepts]
        neuron_f1 = [r["neuron"]["f1"] for r in result.concepts]
        wins = sum(a > b for a, b in zip(sae_f1, neuron_f1, strict=True))
        print(
            f"median F1: SAE latents {statistics.median(sae_f1):.2f}, ViT neurons {statistics.median(neuron_f1):.2f}; the SAE wins on {wins} of {len(sae_f1)} concepts",
            file=file,
        )
        for head, test in result.steering.items():
            m = {k: effects.number(v, ".0%" if "target" in k else ".1%") for k, v in test["medians"].items()}
            print(
                f"steering, {head}: setting each concept's latent to -1x its max where it fires stops {m['target']} "
                f"(median) of its predictions and changes {m['other']} of the other {'object patches' if 'patch' in head else 'images'}; a random latent "
                f"stops {m['random_latent_target']}, a random direction {m['random_direction_target']}",
                file=file,
            )
        for head, ev in result.splice.items():
            print(
                f"spliced SAE, {head}: recovers {effects.number(ev['recovered_zero'], '.3f')} of the loss against zero "
                f"ablation, {effects.number(ev['recovered_mean'], '.3f')} against mean ablation (KL to clean {ev['scores']['spliced']['kl']:.4f})",
                file=file,
            )
    print(f"report: {result.report}", file=file)
    print(f"SAE: {result.sae}", file=file)


def report(result: Result) -> None:
    print_report(result)
    if result.concepts:  # the built-in ViT and its generated images
        print(f"explore: {serve_command(result)}")
    print(f"gallery: {result.gallery}")
    if result.scorecard is not None:
        print(f"scorecard: {result.scorecard}")
    if result.names is not None:
        path, named, total = result.names
        print(f"names: {path} ({named:,} of {total:,} latents named, the rest unexplained)")


def serve_command(result: Result) -> str:
    """The `saev serve` line that explores this run with the built-in ViT and its patch head; its
    concept latents fire on up to a quarter of the patches, so the dense cut-off is raised."""
    return f"saev serve --sae {result.sae} --visuals {result.gallery.parent} --head builtin-patch --dense-freq 0.25"


COMMAND = Command(Config, run, report)

"""`saev quickstart`: the whole pipeline, offline, on the built-in ViT and synthetic concept images.

Generates images with known concepts, records the built-in ViT's activations, trains a TopK SAE,
builds the feature gallery, and scores how well the SAE's best latent for each concept detects
it patch by patch, beside the best single ViT neuron. With --images/--vit-family/--vit-ckpt it
runs the same pipeline on the user's images and model (no concept table then).
"""

import dataclasses
import json
import logging
import pathlib
import statistics
import sys
import time
from typing import TextIO

import numpy as np

from saev import builtin, concepts, synthetic
from saev.activations.families import FamilyName
from saev.activations.recording import RecordConfig, record
from saev.commands.base import Command
from saev.data.store import ShardStore, open_shards
from saev.errors import ConfigError
from saev.fileio import write_json
from saev.nn import checkpoints
from saev.training import RunResult, TrainConfig, train
from saev.visuals import VisualsConfig, make_visuals

logger = logging.getLogger("saev.quickstart")


@dataclasses.dataclass(frozen=True)
class Config:
    """Run the whole pipeline offline: images, activations, a TopK SAE, the gallery and a concept report."""

    out: pathlib.Path = pathlib.Path("quickstart")
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
    images = _generate(cfg) if synthetic_run else cfg.images
    store = _record(cfg, images, ckpt)
    run_result = _train(cfg, store.path)
    scores = _score_concepts(cfg, store, run_result) if synthetic_run else []
    gallery = _visuals(cfg, store.path, run_result, scores)
    report = {
        "store": str(store.path),
        "sae": str(run_result.checkpoint),
        "gallery": str(gallery),
        "eval": run_result.eval.summary() if run_result.eval else None,
        "concepts": scores,
        "seconds": time.perf_counter() - started,
    }
    if scores:
        report["median_f1"] = {
            "sae": statistics.median(r["latent"]["f1"] for r in scores),
            "neuron": statistics.median(r["neuron"]["f1"] for r in scores),
        }
    write_json(cfg.out / "report.json", report)
    return Result(gallery, cfg.out / "report.json", run_result.checkpoint, scores)


def _generate(cfg: Config) -> str:
    root = cfg.out / "images"
    size = builtin.config(builtin.DEFAULT).img_size
    labels = root / "labels.json"
    if labels.exists():
        meta = json.loads(labels.read_text())
        if meta.get("seed") == cfg.seed and len(meta.get("images", [])) == cfg.n_images:
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
    train_cfg = TrainConfig(
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
    [result] = train(train_cfg)
    return result


def _score_concepts(cfg: Config, store: ShardStore, run_result: RunResult) -> list[dict]:
    sae = checkpoints.load(run_result.checkpoint).to(cfg.device).eval()
    dataset = synthetic.load(cfg.out / "images")
    scores = concepts.score_store(sae, store, cfg.layer, dataset, holdout=0.1, device=cfg.device)
    return [score.to_dict() for score in scores]


def _visuals(cfg: Config, shards: pathlib.Path, run_result: RunResult, scores: list[dict]) -> pathlib.Path:
    notes: dict[int, str] = {}
    for row in scores:
        lat = row["latent"]
        note = f"best detector of {row['concept']} (F1 {lat['f1']:.2f})"
        notes[lat["unit"]] = f"{notes[lat['unit']]}; {note}" if lat["unit"] in notes else note
    detectors = list(notes)
    freq = run_result.eval.freq if run_result.eval else []
    live = [s for s, f in enumerate(freq) if f > 0 and s not in detectors]
    extra = (
        np.random.default_rng(cfg.seed)
        .permutation(live)[: max(0, cfg.n_latents - len(set(detectors)))]
        .tolist()
    )
    latents = tuple(sorted(set(detectors) | {int(s) for s in extra}))
    result = make_visuals(
        VisualsConfig(
            sae=str(run_result.checkpoint),
            shards=shards,
            out=cfg.out / "gallery",
            layer=cfg.layer,
            top_k=12,
            latents=latents,
            device=cfg.device,
        ),
        notes,
    )
    return result.index


def print_report(result: Result, file: TextIO | None = None) -> None:
    file = file or sys.stdout
    if result.concepts:
        print(
            f"{'concept':<18} {'best SAE latent':>15} {'F1':>5} {'prec':>5} {'rec':>5}   {'best ViT neuron':>15} {'F1':>5} {'prec':>5} {'rec':>5}",
            file=file,
        )
        for row in result.concepts:
            lat, neu = row["latent"], row["neuron"]
            neuron = f"{neu['unit']}{'+' if neu['sign'] > 0 else '-'}"
            print(
                f"{row['concept']:<18} {lat['unit']:>15} {lat['f1']:5.2f} {lat['precision']:5.2f} {lat['recall']:5.2f}   "
                f"{neuron:>15} {neu['f1']:5.2f} {neu['precision']:5.2f} {neu['recall']:5.2f}",
                file=file,
            )
        sae_f1 = [r["latent"]["f1"] for r in result.concepts]
        neuron_f1 = [r["neuron"]["f1"] for r in result.concepts]
        wins = sum(a > b for a, b in zip(sae_f1, neuron_f1, strict=True))
        print(
            f"median F1: SAE latents {statistics.median(sae_f1):.2f}, ViT neurons {statistics.median(neuron_f1):.2f}; the SAE wins on {wins} of {len(sae_f1)} concepts",
            file=file,
        )
    print(f"report: {result.report}", file=file)
    print(f"SAE: {result.sae}", file=file)


def report(result: Result) -> None:
    print_report(result)
    print(f"gallery: {result.gallery}")


COMMAND = Command(Config, run, report)

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
import torch

from saev.errors import ConfigError
from saev.fileio import write_json

logger = logging.getLogger("saev.quickstart")


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    """Run the whole pipeline offline: images, activations, a TopK SAE, the gallery and a concept report."""

    out: pathlib.Path = pathlib.Path("quickstart")
    """Folder for everything the run makes (reruns reuse finished steps)."""
    images: str | None = None
    """Your own images (folder or hf:NAME:SPLIT) instead of generated concept images."""
    vit_family: str = "builtin"
    """ViT family: builtin, clip, siglip or dinov2."""
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
class QuickstartResult:
    gallery: pathlib.Path
    report: pathlib.Path
    sae: pathlib.Path
    concepts: list[dict]


def quickstart(cfg: QuickstartConfig) -> QuickstartResult:
    from saev import builtin

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
    run = _train(cfg, store.path)
    concepts = _score_concepts(cfg, store, run) if synthetic_run else []
    gallery = _visuals(cfg, store.path, run, concepts)
    report = {
        "store": str(store.path),
        "sae": str(run.checkpoint),
        "gallery": str(gallery),
        "eval": run.eval.summary() if run.eval else None,
        "concepts": concepts,
        "seconds": time.perf_counter() - started,
    }
    if concepts:
        report["median_f1"] = {
            "sae": statistics.median(r["latent"]["f1"] for r in concepts),
            "neuron": statistics.median(r["neuron"]["f1"] for r in concepts),
        }
    write_json(cfg.out / "report.json", report)
    return QuickstartResult(gallery, cfg.out / "report.json", run.checkpoint, concepts)


def _generate(cfg: QuickstartConfig) -> str:
    from saev import builtin, synthetic

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


def _record(cfg: QuickstartConfig, images: str, ckpt: str):
    from saev.activations.recording import RecordConfig, record
    from saev.data import open_shards

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


def _train(cfg: QuickstartConfig, shards: pathlib.Path):
    from saev.training import TrainConfig, train

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
    [run] = train(train_cfg)
    return run


def _score_concepts(cfg: QuickstartConfig, store, run) -> list[dict]:
    """Best latent and best neuron per concept, chosen on half the held-out images, scored on the rest."""
    import saev.nn
    from saev import synthetic
    from saev.activations.vits import patch_grid
    from saev.concepts import best_detectors

    sae = saev.nn.load(run.checkpoint).to(cfg.device).eval()
    dataset = synthetic.load(cfg.out / "images")
    records = {pathlib.PurePath(r.file).name: r for r in dataset.records}
    n = len(store)
    held_out = range(n - max(2, int(np.ceil(0.1 * n))), n)
    grid = patch_grid(store.meta.n_patches_per_img)
    layer_i, cls = store.meta.layer_index(cfg.layer), int(store.meta.cls_token)
    acts, labels = [], []
    for i in held_out:
        acts.append(torch.from_numpy(store.acts(i)[layer_i, cls:]))
        record = records[pathlib.PurePath(store.images[i]["path"]).name]
        labels.append(
            torch.from_numpy(synthetic.patch_concepts(record, grid).reshape(len(synthetic.CONCEPTS), -1).T)
        )
    acts_NV, labels_NC = torch.cat(acts), torch.cat(labels)
    with torch.inference_mode():
        codes_NS = sae.encode(acts_NV.to(cfg.device)).cpu()
    n_patch = store.meta.n_patches_per_img
    select_N = (
        torch.arange(len(acts_NV)) // n_patch
    ) % 2 == 0  # whole images: even ones choose, odd ones score
    latents = best_detectors(codes_NS, labels_NC, select_N, signed=False, include_zero=True)
    neurons = best_detectors(acts_NV, labels_NC, select_N, signed=True, include_zero=False)
    return [
        {
            "concept": concept,
            "patches": int(labels_NC[~select_N, c].sum()),
            "latent": dataclasses.asdict(lat),
            "neuron": dataclasses.asdict(neu),
        }
        for c, (concept, lat, neu) in enumerate(zip(synthetic.CONCEPTS, latents, neurons, strict=True))
    ]


def _visuals(cfg: QuickstartConfig, shards: pathlib.Path, run, concepts: list[dict]) -> pathlib.Path:
    from saev.visuals import VisualsConfig, make_visuals

    notes: dict[int, str] = {}
    for row in concepts:
        lat = row["latent"]
        note = f"best detector of {row['concept']} (F1 {lat['f1']:.2f})"
        notes[lat["unit"]] = f"{notes[lat['unit']]}; {note}" if lat["unit"] in notes else note
    detectors = list(notes)
    freq = run.eval.freq if run.eval else []
    live = [s for s, f in enumerate(freq) if f > 0 and s not in detectors]
    extra = (
        np.random.default_rng(cfg.seed)
        .permutation(live)[: max(0, cfg.n_latents - len(set(detectors)))]
        .tolist()
    )
    latents = tuple(sorted(set(detectors) | {int(s) for s in extra}))
    result = make_visuals(
        VisualsConfig(
            sae=str(run.checkpoint),
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


def print_report(result: QuickstartResult, file: TextIO | None = None) -> None:
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

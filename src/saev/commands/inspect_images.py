"""`saev inspect`: which latents fire on each image, drawn as heatmaps over the crop the ViT saw."""

import dataclasses
import logging
import pathlib
import sys
from typing import Annotated

import torch
import tqdm
import tyro

from saev.activations import families, provenance
from saev.activations.families import FamilyName
from saev.activations.recorder import RecordedVisionTransformer
from saev.activations.transforms import visible_crop
from saev.commands.base import Command
from saev.data.images import load_rgb
from saev.errors import ConfigError, ImageError
from saev.fileio import OutputFolder, save_image, write_json
from saev.nn import checkpoints
from saev.nn.modeling import SparseAutoencoder
from saev.visuals.heatmap import hstack, labelled, overlay
from saev.visuals.summary import summarize

logger = logging.getLogger("saev.inspect")


@dataclasses.dataclass(frozen=True)
class Config:
    """Encode images with an SAE and draw each one's strongest latents."""

    images: Annotated[tuple[pathlib.Path, ...], tyro.conf.Positional]
    """Image files to inspect."""
    sae: str
    """SAE checkpoint: a path, hf://ORG/NAME or hf://ORG/NAME/FILE."""
    out: OutputFolder = pathlib.Path("inspect")
    """Folder for one PNG and one JSON per image."""
    vit_family: FamilyName | None = None
    """ViT family; defaults to the SAE's recorded provenance."""
    vit_ckpt: str | None = None
    """ViT checkpoint; defaults to the SAE's recorded provenance."""
    layer: int | None = None
    """Transformer block the SAE reads; defaults to the SAE's recorded provenance."""
    force: bool = False
    """Read another block, ViT or token selection than the SAE was trained on."""
    top: int = 5
    """Number of latents drawn per image."""
    batch_size: int = 16
    """Images per ViT forward pass."""
    device: str = "cpu"
    """Torch device, e.g. cpu or cuda."""


@dataclasses.dataclass(frozen=True)
class Result:
    written: list[pathlib.Path]
    skipped: dict[str, str]
    """Unreadable image -> reason."""


def run(cfg: Config) -> Result:
    if not cfg.images:
        raise ConfigError("give at least one image to inspect.")
    if cfg.top < 1 or cfg.batch_size < 1:
        raise ConfigError(f"--top and --batch-size must be at least 1, got {cfg.top} and {cfg.batch_size}.")
    sae = checkpoints.load(cfg.sae, device=cfg.device).eval()
    family, ckpt, layer = _model_from(cfg, sae)
    if sae.normalization is None:
        logger.warning(
            "%s carries no activation-normalisation statistics: codes assume the activations were normalised "
            "the same way as in training. See README 'Normalisation'.",
            cfg.sae,
        )
    vit = families.make_vit(family, ckpt).to(cfg.device)
    reading = provenance.Reading(family, ckpt, layer, len(vit.blocks), "patches")
    provenance.check(sae.provenance, reading, force=cfg.force, where=cfg.sae)
    transform = families.make_img_transform(family, ckpt)
    recorder = RecordedVisionTransformer(vit, vit.layout.n_patches, False, [layer]).to(cfg.device)
    if vit.d_vit != sae.cfg.d_vit:
        raise ConfigError(
            f"{cfg.sae} reads {sae.cfg.d_vit}-dim activations but {family}/{ckpt} makes {vit.d_vit}-dim ones."
        )
    cfg.out.mkdir(parents=True, exist_ok=True)
    written, skipped = [], {}
    names = _unique_stems(cfg.images)
    bar = tqdm.tqdm(total=len(cfg.images), unit="img", disable=len(cfg.images) < 8)
    for start in range(0, len(cfg.images), cfg.batch_size):
        batch = []
        for path in cfg.images[start : start + cfg.batch_size]:
            try:
                batch.append((path, load_rgb(path)))
            except ImageError as err:
                logger.warning("skipped %s", err)
                skipped[str(path)] = str(err)
                bar.update(1)
        if not batch:
            continue
        x = torch.stack([transform(img) for _, img in batch]).to(cfg.device)
        with torch.inference_mode():
            codes_BPS = sae.encode(recorder.record(x)[:, 0]).cpu()
        for (path, img), codes_PS in zip(batch, codes_BPS, strict=True):
            top = summarize(codes_PS, cfg.top)
            crop = visible_crop(transform, img)
            tiles = [labelled(crop, path.name[:30])]
            tiles += [
                labelled(
                    overlay(crop, codes_PS[:, s.latent].numpy(), vit.layout.grid),
                    f"latent {s.latent} max {s.max:.3g}",
                )
                for s in top
            ]
            # Not with_suffix: a name like "x.1" keeps its dot (x.1.png, x.1.json).
            png, meta = cfg.out / f"{names[path]}.png", cfg.out / f"{names[path]}.json"
            save_image(png, hstack(tiles))
            record = {
                "image": str(path),
                "sae": cfg.sae,
                "vit": f"{family}/{ckpt}",
                "layer": layer,
                "latents": [dataclasses.asdict(s) for s in top],
            }
            write_json(meta, record)
            written.append(png)
            bar.update(1)
    bar.close()
    if not written:
        raise ImageError(
            f"none of the {len(cfg.images)} image(s) could be read: {'; '.join(skipped.values())}"
        )
    return Result(written, skipped)


def _model_from(cfg: Config, sae: SparseAutoencoder) -> tuple[str, str, int]:
    prov = sae.provenance
    family = cfg.vit_family or prov.vit_family
    ckpt = cfg.vit_ckpt or prov.vit_ckpt
    layer = cfg.layer if cfg.layer is not None else prov.layer
    missing = [
        n for n, v in (("--vit-family", family), ("--vit-ckpt", ckpt), ("--layer", layer)) if v is None
    ]
    if missing:
        raise ConfigError(f"{cfg.sae} does not record which ViT it reads; pass {', '.join(missing)}.")
    return family, ckpt, layer


def _unique_stems(paths: tuple[pathlib.Path, ...]) -> dict[pathlib.Path, str]:
    names: dict[pathlib.Path, str] = {}
    used: set[str] = set()
    for path in paths:
        stem, i = path.stem, 1
        while stem in used:
            i += 1
            stem = f"{path.stem}-{i}"
        used.add(stem)
        names[path] = stem
    return names


def report(result: Result) -> None:
    for path in result.written:
        print(path)
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s)", file=sys.stderr)


COMMAND = Command(Config, run, report)

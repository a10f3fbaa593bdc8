"""`saev inspect`: which latents fire on each image, drawn as heatmaps over the crop the ViT saw.

Dense latents (firing on more than 10% of tokens, `saev.nn.evaluation.dead_and_dense`) fire on
almost every image and say little about any one, so they are left out unless `--dense`. Which
latents are dense comes from a `saev visuals` folder (`--visuals`), else from the inspected images
themselves when they are enough to tell (`MIN_IMAGES_TO_ESTIMATE`), else is not known and
nothing is left out.
"""

import dataclasses
import logging
import pathlib
import sys
from collections.abc import Callable, Iterator
from typing import Annotated

import torch
import tqdm
import tyro
from PIL import Image

from saev.activations import families, provenance
from saev.activations.families import FamilyName
from saev.activations.recorder import RecordedVisionTransformer
from saev.activations.transforms import visible_crop
from saev.commands.base import Command
from saev.data.images import load_rgb
from saev.errors import ConfigError, ImageError
from saev.fileio import OutputFolder, save_image, write_json
from saev.nn import checkpoints
from saev.nn.evaluation import DENSE_DEFINITION, dead_and_dense
from saev.nn.modeling import SparseAutoencoder
from saev.visuals.heatmap import hstack, labelled, overlay
from saev.visuals.summary import Names, VisualsLatents, caption, summarize

logger = logging.getLogger("saev.inspect")

MIN_IMAGES_TO_ESTIMATE = 100
"""Without --visuals, dense latents are told from the inspected images only when there are at
least this many: on a handful of images, a latent for what they all show (sky in a few landscapes)
fires on most of their patches without being dense."""


Encoded = Iterator[tuple[pathlib.Path, Image.Image, torch.Tensor]]
"""Each readable image: its path, its pixels and its codes [patches, d_sae]."""


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
    visuals: pathlib.Path | None = None
    """The saev visuals output of this SAE: its latents.json says which latents are dense and, when naming ran, each latent's name (drawn in the panel labels and written to the JSON). Without it, dense latents are estimated on the inspected images if there are at least 100 of them (a first pass counts how often each latent fires on their patches), else none are left out (said once on stderr)."""
    dense: bool = False
    """Also draw dense latents (firing on more than 10% of tokens), which are left out by default."""
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
    known = VisualsLatents.read(cfg.visuals, sae.cfg.d_sae) if cfg.visuals is not None else None

    def encoded(on_skip: Callable[[pathlib.Path, ImageError], None]) -> Encoded:
        """Every readable image encoded, a batch at a time; `on_skip` hears of the others."""
        for start in range(0, len(cfg.images), cfg.batch_size):
            batch = []
            for path in cfg.images[start : start + cfg.batch_size]:
                try:
                    batch.append((path, load_rgb(path)))
                except ImageError as err:
                    on_skip(path, err)
            if not batch:
                continue
            x = torch.stack([transform(img) for _, img in batch]).to(cfg.device)
            with torch.inference_mode():
                codes_BPS = sae.encode(recorder.record(x)[:, 0]).cpu()
            for (path, img), codes_PS in zip(batch, codes_BPS, strict=True):
                yield path, img, codes_PS

    hidden_S = None if cfg.dense else _dense(cfg, known, lambda: encoded(lambda path, err: None))
    names: Names = known.names if known is not None else {}
    cfg.out.mkdir(parents=True, exist_ok=True)
    written, skipped = [], {}
    out_names = _unique_stems(cfg.images)
    bar = tqdm.tqdm(total=len(cfg.images), unit="img", disable=len(cfg.images) < 8)

    def skip(path: pathlib.Path, err: ImageError) -> None:
        logger.warning("skipped %s", err)
        skipped[str(path)] = str(err)
        bar.update(1)

    for path, img, codes_PS in encoded(skip):
        top = summarize(codes_PS, cfg.top, hidden_S)
        crop = visible_crop(transform, img)
        tiles = [labelled(crop, path.name[:30])]
        tiles += [
            _captioned(overlay(crop, codes_PS[:, s.latent].numpy(), vit.layout.grid), s.latent, s.max, names)
            for s in top
        ]
        # Not with_suffix: a name like "x.1" keeps its dot (x.1.png, x.1.json).
        png, meta = cfg.out / f"{out_names[path]}.png", cfg.out / f"{out_names[path]}.json"
        save_image(png, hstack(tiles))
        latents = []
        for s in top:
            row = dataclasses.asdict(s)
            if s.latent in names:  # absent: naming did not run; null: scored but unexplained
                name = names[s.latent]
                row["name"] = None if name is None else dataclasses.asdict(name)
            latents.append(row)
        record = {
            "image": str(path),
            "sae": cfg.sae,
            "vit": f"{family}/{ckpt}",
            "layer": layer,
            "latents": latents,
            "hidden_dense": 0 if hidden_S is None else int((hidden_S & (codes_PS.amax(0) > 0)).sum()),
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


def _dense(cfg: Config, known: VisualsLatents | None, encoded: Callable[[], Encoded]) -> torch.Tensor | None:
    """Which latents to leave out as dense (see the module docstring); None: not known."""
    if known is not None:
        return known.dense_S
    firing_S, n_tokens, n_images = None, 0, len(cfg.images)
    if n_images >= MIN_IMAGES_TO_ESTIMATE:
        n_images = 0  # the readable ones
        for _, _, codes_PS in encoded():
            fires_S = (codes_PS > 0).sum(0)
            firing_S = fires_S if firing_S is None else firing_S + fires_S
            n_tokens, n_images = n_tokens + codes_PS.shape[0], n_images + 1
    if n_images < MIN_IMAGES_TO_ESTIMATE:
        logger.warning(
            "dense latents are kept: which latents are dense is not known without --visuals (a saev "
            "visuals folder of this SAE), and %d image(s) are too few to estimate it (at least %d).",
            n_images,
            MIN_IMAGES_TO_ESTIMATE,
        )
        return None
    dense_S = dead_and_dense(firing_S / n_tokens)[1]
    logger.info(
        "left out %d dense latents, estimated on the %d inspected images (%s); --dense keeps them.",
        int(dense_S.sum()),
        n_images,
        DENSE_DEFINITION,
    )
    return dense_S


def _captioned(tile: Image.Image, latent: int, max_: float, names: Names) -> Image.Image:
    """`latent 5 max 2.1` under the heatmap; below it, for a latent that was named, its name and F1
    or "unexplained" (a line of its own: a panel is one crop wide)."""
    tile = labelled(tile, f"latent {latent} max {max_:.3g}")
    if latent not in names:
        return tile
    return labelled(tile, caption(names[latent]))


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

"""Which latents fire on each image, drawn as heatmaps over the crop the ViT saw (`saev inspect`).

Dense latents (firing on more than 10% of tokens, `saev.nn.evaluation.dead_and_dense`) fire on
almost every image and say little about any one, so they are left out unless `dense`. Which
latents are dense comes from a `saev visuals` folder (`visuals`), else from the inspected images
themselves when they are enough to tell (`MIN_IMAGES_TO_ESTIMATE`), else is not known and
nothing is left out.
"""

import dataclasses
import logging
import pathlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import torch
import tqdm
from PIL import Image

from saev.activations import families, provenance
from saev.activations.families import FamilyName, Transform
from saev.activations.recorder import RecordedVisionTransformer
from saev.activations.transforms import visible_crop
from saev.errors import ConfigError
from saev.fileio import OutputFolder, save_image, write_json
from saev.nn import checkpoints
from saev.nn.evaluation import DENSE_DEFINITION, dead_and_dense
from saev.nn.modeling import SparseAutoencoder
from saev.visuals.heatmap import hstack, labelled, overlay
from saev.visuals.summary import LatentSummary, Names, VisualsLatents, caption, summarize

logger = logging.getLogger("saev.inspect")

MIN_IMAGES_TO_ESTIMATE = 100
"""Without visuals, dense latents are told from the inspected images only when there are at
least this many: on a handful of images, a latent for what they all show (sky in a few landscapes)
fires on most of their patches without being dense."""


class Batch(Protocol):
    """Readable images, decoded and transformed."""

    @property
    def paths(self) -> list[pathlib.Path]: ...

    @property
    def images(self) -> list[Image.Image]: ...

    @property
    def x_B3HW(self) -> torch.Tensor: ...


LoadBatches = Callable[[Sequence[pathlib.Path], Transform, int, dict[str, str]], Iterable[Batch]]
"""(paths, transform, batch size, skipped) -> the readable images in batches, each unreadable one
recorded in `skipped`; ImageError when none is readable (`saev.steering.inputs.load_batches`)."""

Encoded = Iterator[tuple[pathlib.Path, Image.Image, torch.Tensor]]
"""Each readable image: its path, its pixels and its codes [patches, d_sae]."""


@dataclasses.dataclass(frozen=True)
class InspectConfig:
    """Encode images with an SAE and draw each one's strongest latents."""

    images: tuple[pathlib.Path, ...]
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
class Inspection:
    written: list[pathlib.Path]
    skipped: dict[str, str]
    """Unreadable image -> reason."""


@dataclasses.dataclass(frozen=True)
class _Model:
    """The SAE and the ViT it reads, as `inspect` runs them."""

    sae: SparseAutoencoder
    recorder: RecordedVisionTransformer
    transform: Transform
    grid: tuple[int, int]
    vit: str
    """FAMILY/CKPT."""
    layer: int


def inspect(cfg: InspectConfig, load: LoadBatches) -> Inspection:
    """One PNG (the crop and its `cfg.top` strongest latents' heatmaps) and one JSON per readable
    image of `cfg.images`, read in batches by `load`."""
    if not cfg.images:
        raise ConfigError("give at least one image to inspect.")
    if cfg.top < 1 or cfg.batch_size < 1:
        raise ConfigError(f"--top and --batch-size must be at least 1, got {cfg.top} and {cfg.batch_size}.")
    model = _model(cfg)
    known = VisualsLatents.read(cfg.visuals, model.sae.cfg.d_sae) if cfg.visuals is not None else None

    def encoded(skipped: dict[str, str]) -> Encoded:
        """Every readable image encoded, a batch at a time; the others go to `skipped`."""
        for batch in load(cfg.images, model.transform, cfg.batch_size, skipped):
            with torch.inference_mode():
                codes_BPS = model.sae.encode(model.recorder.record(batch.x_B3HW.to(cfg.device))[:, 0]).cpu()
            yield from zip(batch.paths, batch.images, codes_BPS, strict=True)

    hidden_S = None if cfg.dense else _dense(cfg, known, lambda: encoded({}))
    names: Names = known.names if known is not None else {}
    cfg.out.mkdir(parents=True, exist_ok=True)
    written: list[pathlib.Path] = []
    skipped: dict[str, str] = {}
    out_names = _unique_stems(cfg.images)
    bar = tqdm.tqdm(total=len(cfg.images), unit="img", disable=len(cfg.images) < 8)
    for path, img, codes_PS in encoded(skipped):
        top = summarize(codes_PS, cfg.top, hidden_S)
        crop = visible_crop(model.transform, img)
        # Not with_suffix: a name like "x.1" keeps its dot (x.1.png, x.1.json).
        png = cfg.out / f"{out_names[path]}.png"
        save_image(png, _picture(path, model.grid, crop, codes_PS, top, names))
        write_json(
            cfg.out / f"{out_names[path]}.json", _record(cfg, model, path, codes_PS, top, hidden_S, names)
        )
        written.append(png)
        bar.update(len(written) + len(skipped) - bar.n)
    bar.update(len(written) + len(skipped) - bar.n)
    bar.close()
    return Inspection(written, skipped)


def _model(cfg: InspectConfig) -> _Model:
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
    return _Model(sae, recorder, transform, vit.layout.grid, f"{family}/{ckpt}", layer)


def _picture(
    path: pathlib.Path,
    grid: tuple[int, int],
    crop: Image.Image,
    codes_PS: torch.Tensor,
    top: list[LatentSummary],
    names: Names,
) -> Image.Image:
    """The crop, then a heatmap of each of its strongest latents."""
    tiles = [labelled(crop, path.name[:30])]
    tiles += [
        _captioned(overlay(crop, codes_PS[:, s.latent].numpy(), grid), s.latent, s.max, names) for s in top
    ]
    return hstack(tiles)


def _record(
    cfg: InspectConfig,
    model: _Model,
    path: pathlib.Path,
    codes_PS: torch.Tensor,
    top: list[LatentSummary],
    hidden_S: torch.Tensor | None,
    names: Names,
) -> dict[str, Any]:
    latents = []
    for s in top:
        row = dataclasses.asdict(s)
        if s.latent in names:  # absent: naming did not run; null: scored but unexplained
            name = names[s.latent]
            row["name"] = None if name is None else dataclasses.asdict(name)
        latents.append(row)
    return {
        "image": str(path),
        "sae": cfg.sae,
        "vit": model.vit,
        "layer": model.layer,
        "latents": latents,
        "hidden_dense": 0 if hidden_S is None else int((hidden_S & (codes_PS.amax(0) > 0)).sum()),
    }


def _dense(
    cfg: InspectConfig, known: VisualsLatents | None, encoded: Callable[[], Encoded]
) -> torch.Tensor | None:
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
    assert firing_S is not None  # at least MIN_IMAGES_TO_ESTIMATE images were encoded
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


def _model_from(cfg: InspectConfig, sae: SparseAutoencoder) -> tuple[str, str, int]:
    prov = sae.provenance
    family = cfg.vit_family or prov.vit_family
    ckpt = cfg.vit_ckpt or prov.vit_ckpt
    layer = cfg.layer if cfg.layer is not None else prov.layer
    if family is None or ckpt is None or layer is None:
        missing = [
            n for n, v in (("--vit-family", family), ("--vit-ckpt", ckpt), ("--layer", layer)) if v is None
        ]
        raise ConfigError(f"{cfg.sae} does not record which ViT it reads; pass {', '.join(missing)}.")
    return family, ckpt, layer


def _unique_stems(paths: Sequence[pathlib.Path]) -> dict[pathlib.Path, str]:
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

"""What the steering and evaluation commands read: the spliced model named by an SAE's provenance,
image files, their labels, and each latent's largest activation."""

import dataclasses
import logging
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float
from PIL import Image
from safetensors import SafetensorError, safe_open
from torch import Tensor

from saev import synthetic
from saev.activations import provenance
from saev.activations.families import Transform, make_img_transform, make_vit
from saev.data.images import ImageFiles, decode_batches, none_readable
from saev.data.layout import Tokens
from saev.data.sources import EXTENSIONS
from saev.errors import ConfigError, ImageError
from saev.fileio import check_input, existing_kind
from saev.nn.modeling import SparseAutoencoder
from saev.steering.splice import SplicedVit

logger = logging.getLogger("saev.steering")


def spliced_model(
    sae: SparseAutoencoder,
    vit_family: str | None,
    vit_ckpt: str | None,
    layer: int | None,
    tokens: Tokens | None,
    *,
    force: bool = False,
    device: str = "cpu",
    where: str = "the SAE",
) -> tuple[SplicedVit, Transform]:
    """The ViT the SAE was trained on (or the one given) with the SAE spliced in, and its transform."""
    prov = sae.provenance
    family, ckpt = vit_family or prov.vit_family, vit_ckpt or prov.vit_ckpt
    if family is None or ckpt is None or (layer is None and prov.layer is None):
        missing = [n for n, v in (("--vit-family", family), ("--vit-ckpt", ckpt)) if v is None]
        if layer is None and prov.layer is None:
            missing.append("--layer")
        raise ConfigError(f"{where} does not record which ViT it reads; pass {', '.join(missing)}.")
    # Before building a model only to refuse it.
    provenance.check(prov, provenance.Reading(family, ckpt), force=force, where=where)
    vit = make_vit(family, ckpt).to(device)
    spliced = SplicedVit(vit, sae.to(device).eval(), layer, tokens, force=force, where=where)
    return spliced, make_img_transform(family, ckpt)


def image_files(paths: Sequence[pathlib.Path]) -> list[pathlib.Path]:
    """Files as given, folders walked recursively for image extensions, in sorted order."""
    out = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        else:
            out.append(path)
    if not out:
        raise ConfigError(f"no image files in {', '.join(map(str, paths))}.")
    return list(dict.fromkeys(out))  # an image given twice (or in two folders given) counts once


@dataclasses.dataclass(frozen=True)
class Loaded:
    paths: list[pathlib.Path]
    images: list[Image.Image]
    x_B3HW: Float[Tensor, "batch 3 height width"]


def load_batches(
    paths: Sequence[pathlib.Path], transform: Transform, batch_size: int, skipped: dict[str, str]
) -> Iterator[Loaded]:
    """Readable images in batches; unreadable ones are logged and recorded in `skipped`. When none
    is readable, ImageError saying why each was skipped: every command would otherwise report on
    nothing and succeed."""
    reasons = []
    chunks = decode_batches(
        ImageFiles(tuple(paths)),
        transform,
        range(len(paths)),
        batch_size,
        keep_images=True,
        skip_unprocessable=False,
    )
    for chunk in chunks:
        for item in chunk.failed:
            reason = str(item.unreadable)
            logger.warning("skipped %s", reason)
            skipped[str(paths[item.index])] = reason
            reasons.append(reason)
        if chunk.readable:
            yield Loaded([paths[d.index] for d in chunk.readable], chunk.images, chunk.stack())
    if reasons and len(reasons) == len(paths):
        raise ImageError(none_readable(len(paths), reasons))


@dataclasses.dataclass(frozen=True)
class Labels:
    """Known classes of each image (multi-hot over `classes`) and, when known, of each patch."""

    classes: tuple[str, ...]
    image_NC: Bool[Tensor, "n classes"]
    patch_NPC: Bool[Tensor, "n patches classes"] | None


def labels_for(paths: Sequence[pathlib.Path], classes: Sequence[str], grid: tuple[int, int]) -> Labels | None:
    """Labels from a `saev.synthetic` folder (labels.json beside images/: image and patch concepts)
    or from class subfolders (an image's folder name is its class); None when neither applies."""
    root = _synthetic_root(paths)
    if root is not None:
        chosen = _synthetic_records(root, paths)
        index = [synthetic.CONCEPTS.index(c) if c in synthetic.CONCEPTS else None for c in classes]
        if all(i is None for i in index):
            return None
        image = np.stack([synthetic.image_concepts(r) for r in chosen])
        try:
            patch = np.stack([synthetic.patch_rows(r, grid) for r in chosen])
        except ValueError as err:  # images of another size than the model's grid tiles
            raise ConfigError(f"{root / 'labels.json'}: {err}") from None

        def pick(per_concept: np.ndarray) -> np.ndarray:
            """The concept columns in `classes` order; classes that are no concept are never present."""
            absent = np.zeros(per_concept.shape[:-1], dtype=bool)
            return np.stack([per_concept[..., i] if i is not None else absent for i in index], -1)

        return Labels(tuple(classes), torch.from_numpy(pick(image)), torch.from_numpy(pick(patch)))
    names = [p.parent.name for p in paths]
    if not set(names) & set(classes):
        return None
    image_NC = torch.tensor([[n == c for c in classes] for n in names], dtype=torch.bool)
    return Labels(tuple(classes), image_NC, None)


def _synthetic_records(root: pathlib.Path, paths: Sequence[pathlib.Path]) -> list[synthetic.ImageRecord]:
    """The labels.json records of `paths`; ConfigError naming the file when it is unreadable,
    malformed or misses an image."""
    labels = root / "labels.json"
    try:
        dataset = synthetic.load(root)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise ConfigError(
            f"{labels}: not a readable saev.synthetic labels file ({type(err).__name__}: {err})."
        ) from None
    records = {(root / r.file).resolve(): r for r in dataset.records}
    missing = [p for p in paths if p.resolve() not in records]
    if missing:
        raise ConfigError(
            f"{labels}: no labels for {len(missing)} of the {len(paths)} image(s) (e.g. {missing[0]}); "
            "regenerate the folder or give the images without it."
        )
    return [records[p.resolve()] for p in paths]


def _synthetic_root(paths: Sequence[pathlib.Path]) -> pathlib.Path | None:
    roots = {p.resolve().parent.parent for p in paths}
    if len(roots) == 1:
        root = roots.pop()
        if (root / "labels.json").is_file() and all(p.resolve().parent == root / "images" for p in paths):
            return root
    return None


def max_from_visuals(folder: pathlib.Path, d_sae: int) -> Float[Tensor, " d_sae"]:
    """Each latent's largest activation from a `saev visuals` output folder (its topk.safetensors)."""
    path = folder / "topk.safetensors"
    if existing_kind(path) is None:
        raise ConfigError(f"--visuals {folder}: no topk.safetensors (the output folder of saev visuals).")
    check_input(path, "topk file")  # safe_open would wait on a FIFO forever
    try:
        with safe_open(str(path), "pt") as f:
            max_S = f.get_tensor("max")
    except (SafetensorError, OSError, KeyError) as err:
        raise ConfigError(f"{path}: cannot read the latents' maxima ({type(err).__name__}: {err}).") from None
    if max_S.shape != (d_sae,) or not max_S.is_floating_point():
        raise ConfigError(
            f"{path}: maxima of shape {list(max_S.shape)} ({max_S.dtype}), but the SAE has {d_sae} latents."
        )
    bad = torch.nonzero(~torch.isfinite(max_S)).flatten().tolist()
    if bad:
        raise ConfigError(f"{path}: the maxima of latents {bad[:10]} are not finite; rerun saev visuals.")
    return max_S.float()


def max_over(spliced: SplicedVit, batches: Iterator[Tensor]) -> Float[Tensor, " d_sae"]:
    """Each latent's largest activation over images."""
    max_S = torch.zeros(spliced.sae.cfg.d_sae, device=spliced.device)
    for x in batches:
        max_S = torch.maximum(max_S, spliced.prefix(x).codes_BNS.amax((0, 1)))
    return max_S

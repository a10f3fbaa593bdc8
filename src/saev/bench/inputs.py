"""What a scorecard reads: one pass over a store's images through the SAE, kept in the forms the
metrics need (sparse patch codes, pooled codes, per-image sums), and what is known about the images
(labels, patch masks, a label hierarchy)."""

import dataclasses
import json
import logging
import pathlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
import tqdm
from jaxtyping import Bool, Float
from torch import Tensor

from saev import synthetic
from saev.activations.families.base import Transform
from saev.bench.absorption import Hierarchy
from saev.bench.reconstruction import TokenSums, token_sums
from saev.data.store import ShardStore
from saev.errors import ConfigError
from saev.fileio import existing_kind, read_json
from saev.nn.modeling import SparseAutoencoder
from saev.steering.probes import mask_patch_labels, read_class_names

logger = logging.getLogger("saev.bench")

IGNORE_LABEL = 255
"""Mask label of pixels without a class (as `saev probe`'s default)."""
BLOCK_BYTES = 1 << 27
"""Dense code blocks handed to the metrics stay under this size (128 MiB)."""


class PatchCodes:
    """Every patch token's SAE codes, stored sparse (CSR by token), handed out as dense blocks of
    consecutive images: a 3,000-image store at 1,024 latents is 0.8 GB dense but ~25 MB sparse."""

    def __init__(self, n_patches: int, d_sae: int):
        self.n_patches, self.d_sae = n_patches, d_sae
        self._counts: list[Tensor] = []
        self._cols: list[Tensor] = []
        self._vals: list[Tensor] = []

    def add(self, codes_BPS: Float[Tensor, "batch patches d_sae"]) -> None:
        flat = codes_BPS.reshape(-1, self.d_sae)
        nz = flat > 0
        self._counts.append(nz.sum(1).to(torch.int64).cpu())
        rows, cols = nz.nonzero(as_tuple=True)
        self._cols.append(cols.to(torch.int32).cpu())
        self._vals.append(flat[rows, cols].float().cpu())

    def freeze(self) -> None:
        counts = torch.cat(self._counts) if self._counts else torch.zeros(0, dtype=torch.int64)
        self.indptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        self.cols = torch.cat(self._cols) if self._cols else torch.zeros(0, dtype=torch.int32)
        self.vals = torch.cat(self._vals) if self._vals else torch.zeros(0)
        self._counts, self._cols, self._vals = [], [], []

    @property
    def n_images(self) -> int:
        return (len(self.indptr) - 1) // self.n_patches

    def block(self, start: int, stop: int) -> Float[Tensor, "images patches d_sae"]:
        p = self.n_patches
        lo, hi = int(self.indptr[start * p]), int(self.indptr[stop * p])
        per_token = self.indptr[start * p + 1 : stop * p + 1] - self.indptr[start * p : stop * p]
        rows = torch.repeat_interleave(torch.arange(len(per_token)), per_token)
        dense = torch.zeros((stop - start) * p, self.d_sae)
        dense[rows, self.cols[lo:hi].long()] = self.vals[lo:hi]
        return dense.reshape(stop - start, p, self.d_sae)

    def block_size(self) -> int:
        return max(1, BLOCK_BYTES // (4 * self.n_patches * self.d_sae))

    def blocks(self, images: Sequence[int] | None = None) -> Iterator[Float[Tensor, "images patches d_sae"]]:
        """Dense blocks of all images in order (or of `images`, each block of consecutive runs)."""
        size = self.block_size()
        if images is None:
            for start in range(0, self.n_images, size):
                yield self.block(start, min(start + size, self.n_images))
            return
        for start in range(0, len(images), size):
            yield torch.stack([self.block(i, i + 1)[0] for i in images[start : start + size]])


@dataclasses.dataclass
class Gathered:
    """One SAE's view of the images."""

    codes: PatchCodes
    pooled_NS: np.ndarray
    """Each image's largest code per latent (max over patches)."""
    fires_NS: np.ndarray
    """Patches of each image on which each latent fires."""
    tokens_N: np.ndarray
    sums: TokenSums
    """Per-image reconstruction sums in the SAE's normalised space."""


def read_acts(
    store: ShardStore, layer: int, images: Sequence[int]
) -> Iterator[Float[Tensor, "batch patches d_vit"]]:
    """Patch tokens (no [CLS]) of `images` at `layer`, in batches of consecutive images."""
    layer_i, cls = store.layer_index(layer), int(store.meta.cls_token)
    for run in _runs(images):
        yield torch.stack([torch.from_numpy(store.acts(i)[layer_i, cls:]) for i in run])


def _runs(images: Sequence[int], size: int = 64) -> Iterator[list[int]]:
    for start in range(0, len(images), size):
        yield list(images[start : start + size])


@torch.inference_mode()
def gather(
    sae: SparseAutoencoder,
    store: ShardStore,
    layer: int,
    images: Sequence[int],
    *,
    device: str = "cpu",
    desc: str = "encoding",
) -> Gathered:
    """Encode `images`' patch tokens once; every metric reads what this keeps."""
    n_patches = store.meta.n_patches_per_img
    codes = PatchCodes(n_patches, sae.cfg.d_sae)
    pooled, fires, sums = [], [], []
    batches = tqdm.tqdm(read_acts(store, layer, images), total=-(-len(images) // 64), desc=desc, unit="batch")
    for acts_BPD in batches:
        x_n = sae.normalize(acts_BPD.to(device))
        f_BPS = sae.encode_normalized(x_n)
        codes.add(f_BPS)
        pooled.append(f_BPS.amax(1).cpu())
        fires.append((f_BPS > 0).sum(1).to(torch.int32).cpu())
        sums.append(token_sums(x_n, sae.decode_normalized(f_BPS)))
    codes.freeze()
    return Gathered(
        codes,
        torch.cat(pooled).numpy(),
        torch.cat(fires).numpy(),
        np.full(len(images), n_patches),
        TokenSums.concat(sums),
    )


def dense_pooled(store: ShardStore, layer: int, images: Sequence[int]) -> np.ndarray:
    """Each image's mean patch activation: what the dense baseline probe reads."""
    return torch.cat([a.mean(1) for a in read_acts(store, layer, images)]).numpy()


@dataclasses.dataclass(frozen=True)
class Knowledge:
    """What is known about the images beyond their pixels."""

    tasks: dict[str, np.ndarray]
    """Probe tasks: name -> int label per image (-1: not part of the task)."""
    concepts: tuple[str, ...] = ()
    patch_NPC: Bool[np.ndarray, "n patches concepts"] | None = None
    hierarchies: tuple[Hierarchy, ...] = ()
    items: "Items | None" = None
    """What absorption compares: objects (with masks) or whole images."""
    source: str = "none"
    """Where the labels came from: builtin world, class folders, none."""


@dataclasses.dataclass(frozen=True)
class Items:
    """Units absorption scores: each a set of (image, patches) whose codes are max-pooled."""

    image_M: np.ndarray
    patches_MP: np.ndarray | None
    """None: the whole image."""

    def codes(self, gathered: Gathered) -> np.ndarray:
        """[items, d_sae]: each item's largest code per latent over its patches."""
        if self.patches_MP is None:
            return gathered.pooled_NS[self.image_M]
        codes = gathered.codes
        out = np.zeros((len(self.image_M), codes.d_sae), dtype=np.float32)
        size = codes.block_size()
        for start in range(0, codes.n_images, size):
            stop = min(start + size, codes.n_images)
            sel = np.nonzero((self.image_M >= start) & (self.image_M < stop))[0]
            if len(sel):
                dense = codes.block(start, stop)[torch.from_numpy(self.image_M[sel] - start)]
                mask = torch.from_numpy(self.patches_MP[sel])[..., None]
                out[sel] = torch.where(mask, dense, 0).amax(1).numpy()
        return out


def synthetic_knowledge(dataset: synthetic.Dataset, files: Sequence[str], grid: tuple[int, int]) -> Knowledge:
    """Labels of the built-in world: image concepts (one binary task each), patch masks, and the
    objects as absorption items with the world's hierarchy (shape, colour and texture families)."""
    by_name = {pathlib.PurePath(r.file).name: r for r in dataset.records}
    try:
        records = [by_name[pathlib.PurePath(f).name] for f in files]
    except KeyError as err:
        raise ConfigError(f"{dataset.root / 'labels.json'}: no labels for image {err}.") from None
    image_NC = np.stack([synthetic.image_concepts(r) for r in tqdm.tqdm(records, desc="labels", unit="img")])
    patch, objects = [], []
    for i, r in enumerate(records):
        mask = synthetic.object_mask(r)
        patch.append(synthetic.patch_rows(r, grid, mask=mask))
        objects += [(i, o, rows) for o, rows in enumerate(synthetic.object_patches(r, grid, mask=mask))]
    tasks = {c: image_NC[:, k].astype(np.int64) for k, c in enumerate(synthetic.CONCEPTS)}
    items = Items(np.array([i for i, _, _ in objects]), np.stack([rows for _, _, rows in objects]))
    hierarchies = []
    for axis, values in (
        ("shape", synthetic.SHAPES),
        ("colour", tuple(synthetic.COLOURS)),
        ("texture", synthetic.TEXTURES),
    ):
        classes = tuple(f"{axis}:{v}" for v in values)
        labels = np.array([values.index(getattr(records[i].objects[o], axis)) for i, o, _ in objects])
        groups = {
            p: [classes.index(c) for c in cs] for p, cs in synthetic.HIERARCHY.items() if cs[0] in classes
        }
        hierarchies.append(Hierarchy(classes, labels, groups))
    return Knowledge(tasks, synthetic.CONCEPTS, np.stack(patch), tuple(hierarchies), items, "built-in world")


def folder_knowledge(
    labels: Sequence[str | None], hierarchy: Mapping[str, Sequence[str]] | None
) -> Knowledge:
    """Labels of class folders: one exclusive task over the classes, and the hierarchy file's
    groups of classes for absorption (items are whole images)."""
    classes = tuple(sorted({label for label in labels if label is not None}))
    if len(classes) < 2:
        return Knowledge({})
    y_N = np.array([classes.index(label) if label is not None else -1 for label in labels])
    hierarchies: tuple[Hierarchy, ...] = ()
    if hierarchy:
        groups = {p: [classes.index(c) for c in cs if c in classes] for p, cs in hierarchy.items()}
        hierarchies = (Hierarchy(classes, y_N, groups),)
    return Knowledge({"class": y_N}, (), None, hierarchies, Items(np.arange(len(y_N)), None), "class folders")


def read_hierarchy(path: pathlib.Path) -> dict[str, list[str]]:
    """A label hierarchy file: a JSON object mapping each parent name to its children's names."""
    data = read_json(path, "label hierarchy", ConfigError)
    if not isinstance(data, dict) or not all(
        isinstance(cs, list) and all(isinstance(c, str) for c in cs) for cs in data.values()
    ):
        raise ConfigError(f"{path}: a label hierarchy is a JSON object {{parent: [child, ...]}}.")
    return data


def knowledge(
    store: ShardStore, images: Sequence[int], root: pathlib.Path | None, hierarchy: pathlib.Path | None
) -> Knowledge:
    """The built-in world's labels when the images are a `saev.synthetic` folder, else class folders."""
    records = [store.images[i] for i in images] if store.images else []
    # A generated folder is ROOT/labels.json beside ROOT/images/; stores record either folder.
    found = [
        f
        for f in ((root, root.parent) if root is not None else ())
        if existing_kind(f / "labels.json") == "a file"
    ]
    if found:
        try:
            dataset = synthetic.load(found[0])
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
            raise ConfigError(
                f"{found[0] / 'labels.json'}: not a saev.synthetic labels file ({err})."
            ) from None
        return synthetic_knowledge(dataset, [r.get("path", "") for r in records], store.grid)
    return folder_knowledge(
        [r.get("label") for r in records], read_hierarchy(hierarchy) if hierarchy else None
    )


def with_masks(
    known: Knowledge,
    files: Sequence[str],
    masks: pathlib.Path,
    names_file: pathlib.Path | None,
    transform: Transform,
    grid: tuple[int, int],
) -> Knowledge:
    """`known` with patch concepts read from label masks: each patch takes its majority label
    through the model's crop (as `saev probe` segmentation); label 0 is background, 255 ignored."""
    if existing_kind(masks) != "a folder":
        raise ConfigError(f"--masks {masks}: not a folder.")
    by_stem = {p.relative_to(masks).with_suffix("").as_posix(): p for p in masks.rglob("*") if p.is_file()}
    missing = [f for f in files if pathlib.PurePath(f).with_suffix("").as_posix() not in by_stem]
    if missing:
        raise ConfigError(f"--masks {masks}: no mask for {len(missing)} image(s), e.g. {missing[0]}.")
    labels_NP = np.stack(
        [
            mask_patch_labels(transform, by_stem[pathlib.PurePath(f).with_suffix("").as_posix()], grid)
            for f in tqdm.tqdm(files, desc="masks", unit="img")
        ]
    )
    names = read_class_names(names_file)
    present = sorted(int(v) for v in np.unique(labels_NP) if v not in (0, IGNORE_LABEL))
    if names is not None and present and present[-1] >= len(names):
        raise ConfigError(f"{names_file}: names {len(names)} labels, but the masks use label {present[-1]}.")
    concepts = tuple(names[v] if names else f"label-{v}" for v in present)
    patch_NPC = labels_NP[..., None] == np.array(present)[None, None]
    return dataclasses.replace(known, concepts=concepts, patch_NPC=patch_NPC)

"""Each latent's best candidate name, chosen on one half of the images and scored on the other."""

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse
from jaxtyping import Float

from saev.bench.inputs import Gathered
from saev.errors import ConfigError
from saev.fileio import read_json, write_json
from saev.naming.candidates import Candidates, Level, Source
from saev.naming.settings import MIN_F1

MIN_FIRES = 5
"""Units (patches or images) a latent must fire on among the choosing images to be named at all."""
FORMAT = "saev-latent-names/1"


class NothingToName(ConfigError):
    """The images offer no candidate name: no concepts, masks, class labels or words."""


@dataclasses.dataclass(frozen=True)
class LatentName:
    text: str
    source: Source
    """Where the name comes from: built-in concepts, mask labels, class labels or zero-shot words."""
    level: Level
    """Whether it is scored patch by patch or image by image."""
    f1: float
    """F1 of `code > 0` as a detector of the name, on the scoring images (never used to choose it)."""
    precision: float
    recall: float
    fires: int
    """Units the latent fires on among the scoring images."""
    chosen_f1: float
    """F1 on the choosing images, where the name won."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Naming:
    names: dict[int, LatentName | None]
    """Every latent: its name, or None when unexplained."""
    method: dict[str, Any]
    """How the names were made (sources, images of each half, threshold), for latents.json."""

    @property
    def n_named(self) -> int:
        return sum(name is not None for name in self.names.values())

    def as_dicts(self) -> dict[int, dict[str, Any] | None]:
        """latent -> its name as JSON (None: unexplained), as `make_visuals(names=...)` takes it."""
        return {s: None if n is None else n.to_json() for s, n in self.names.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": self.method,
            "n_named": self.n_named,
            "latents": [{"latent": s, "name": n} for s, n in sorted(self.as_dicts().items())],
        }


@dataclasses.dataclass(frozen=True)
class _Counts:
    """Detector counts of every (latent, candidate) on one half of the images."""

    tp_SC: Float[np.ndarray, "d_sae names"]
    fires_S: Float[np.ndarray, " d_sae"]
    present_C: Float[np.ndarray, " names"]

    def f1(self) -> Float[np.ndarray, "d_sae names"]:
        return _ratio(2 * self.tp_SC, self.fires_S[:, None] + self.present_C[None, :])


def name_latents(
    gathered: Gathered,
    candidates: Sequence[Candidates],
    *,
    min_f1: float = MIN_F1,
    seed: int = 0,
) -> Naming:
    """Name every latent of the SAE that made `gathered` from `candidates` (over the same images)."""
    if not candidates:
        raise NothingToName(
            "nothing to name latents with: the images have no class labels, concepts, masks or "
            "zero-shot words (give --masks, class folders, or a CLIP-family model with --vocabulary)."
        )
    n_images = gathered.codes.n_images
    if n_images < 4:
        raise ConfigError(f"naming needs at least 4 images (half choose, half score), got {n_images}.")
    order = np.random.default_rng(seed).permutation(n_images)
    choose, scoring = np.sort(order[: n_images // 2]), np.sort(order[n_images // 2 :])
    fires = {"patch": _patch_fires(gathered), "image": _image_fires(gathered)}
    per_set = [
        (
            c,
            _counts(fires[c.level], c, choose, gathered.codes.n_patches),
            _counts(fires[c.level], c, scoring, gathered.codes.n_patches),
        )
        for c in candidates
    ]
    # Candidates of every source compete; the best F1 on the choosing half wins.
    f1_SC = np.concatenate([chosen.f1() for _, chosen, _ in per_set], axis=1)
    owner = np.concatenate([np.full(len(c.names), k) for k, (c, _, _) in enumerate(per_set)])
    offset = np.concatenate([np.arange(len(c.names)) for c, _, _ in per_set])
    best_S = f1_SC.argmax(1)
    names: dict[int, LatentName | None] = {}
    for s, j in enumerate(best_S.tolist()):
        c, chosen, scored = per_set[owner[j]]
        k = int(offset[j])
        if chosen.fires_S[s] < MIN_FIRES or f1_SC[s, j] < min_f1:
            names[s] = None
            continue
        tp, fired, present = scored.tp_SC[s, k], scored.fires_S[s], scored.present_C[k]
        names[s] = LatentName(
            c.names[k],
            c.source,
            c.level,
            float(_ratio(2 * tp, fired + present)),
            float(_ratio(tp, fired)),
            float(_ratio(tp, present)),
            int(fired),
            float(f1_SC[s, j]),
        )
    method = {
        "detector": "code > 0 (where the latent fires)",
        "min_f1": min_f1,
        "min_fires": MIN_FIRES,
        "seed": seed,
        "n_choosing_images": len(choose),
        "n_scoring_images": len(scoring),
        "sources": sorted({f"{c.source} ({c.level}, {len(c.names)} names)" for c in candidates}),
    }
    return Naming(names, method)


def _patch_fires(gathered: Gathered) -> scipy.sparse.csr_matrix:
    codes = gathered.codes
    data = np.ones(len(codes.cols), dtype=np.float32)
    shape = (codes.n_images * codes.n_patches, codes.d_sae)
    return scipy.sparse.csr_matrix((data, codes.cols.numpy(), codes.indptr.numpy()), shape=shape)


def _image_fires(gathered: Gathered) -> scipy.sparse.csr_matrix:
    return scipy.sparse.csr_matrix((gathered.fires_NS > 0).astype(np.float32))


def _counts(
    fires: scipy.sparse.csr_matrix, candidates: Candidates, images: np.ndarray, n_patches: int
) -> _Counts:
    present_UC = candidates.units(images)
    rows = (
        (images[:, None] * n_patches + np.arange(n_patches)).ravel()
        if candidates.level == "patch"
        else images
    )
    fires_US = fires[rows]
    tp_SC = np.asarray(fires_US.T @ present_UC.astype(np.float32))
    return _Counts(tp_SC, np.asarray(fires_US.sum(0)).ravel(), present_UC.sum(0).astype(np.float64))


def _ratio(num: np.ndarray | np.floating | float, den: np.ndarray | np.floating | float) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def write_names(naming: Naming, path: pathlib.Path) -> None:
    write_json(path, naming.to_json())


def read_names(path: pathlib.Path) -> dict[int, dict[str, Any] | None]:
    """latent -> name (None: unexplained) from a `saev label` names.json."""
    return read_naming(path)[0]


def read_naming(path: pathlib.Path) -> tuple[dict[int, dict[str, Any] | None], dict[str, Any]]:
    """A `saev label` names.json: latent -> name (None: unexplained), and how they were made."""
    data = read_json(path, "latent names file", ConfigError)
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or not isinstance(data.get("latents"), list)
    ):
        raise ConfigError(f"{path}: not a names file of `saev label` (format {FORMAT}).")
    out: dict[int, dict[str, Any] | None] = {}
    for row in data["latents"]:
        if not (
            isinstance(row, dict)
            and isinstance(row.get("latent"), int)
            and (row.get("name") is None or isinstance(row["name"], dict))
        ):
            raise ConfigError(
                f"{path}: a latents entry is not {{latent: int, name: object or null}}: {row!r:.80}."
            )
        out[row["latent"]] = row["name"]
    method = data.get("method")
    return out, method if isinstance(method, dict) else {}

"""Moran's I of each latent's patch map: does a latent fire on one contiguous region or on scattered patches?

Per (image, latent) with enough active patches, Moran's I of the latent's values over the patch
grid; per latent, the mean over its valid images; the score is the mean over latents with enough
valid images. This is visaebench's M1 (FeatureLocalization) computation; with its settings (queen
adjacency, `min_active=5`, `min_images=50`, `max_images_per_latent=200`) the numbers agree with it
on the same codes. saev's defaults differ on purpose: rook adjacency (the issue's and Moran's
textbook contiguity), and filters for small grids (an 8x8 grid's objects cover 3-12 patches, and a
few hundred images leave few latents with 50 valid ones), with no per-latent cap. The baseline is the same
score after shuffling every image's patches, which keeps each map's values and destroys its layout.
"""

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import scipy.sparse
import torch
from jaxtyping import Float
from torch import Tensor

from saev.bench import stats

LOCALIZED = 0.1
"""A latent whose mean Moran's I exceeds this counts as localised (visaebench's non-localised threshold)."""
CHUNK_ELEMENTS = 1 << 24
"""Codes handled at once inside a block (images x patches x latents), to bound temporary memory."""
VARIANCE_EPS = 1e-10
"""visaebench's floor on sum((x - mean)^2): a flat map has no spatial pattern."""


def morans_i(
    blocks: Iterable[Float[Tensor, "_images patches d_sae"]],
    grid: tuple[int, int],
    *,
    adjacency: Literal["rook", "queen"] = "rook",
    min_active: int = 2,
    max_active_fraction: float = 0.9,
    min_images: int = 5,
    max_images_per_latent: int | None = None,
    resamples: int = stats.RESAMPLES,
    seed: int = 0,
) -> list[stats.Metric]:
    """`morans_i` and `localized_share` of the codes in `blocks`, each with its shuffled-patch baseline.

    `blocks` yields dense codes of consecutive images, patch tokens only, in row-major grid order.
    A (image, latent) pair is valid when the latent is non-zero on `min_active` to
    floor(max_active_fraction * patches) patches and its map is not flat; `max_images_per_latent`
    keeps only each latent's first valid images, as visaebench does (None keeps all). A latent is
    evaluable with at least `min_images` valid images. The shuffled baseline moves image i's patch p
    to position perm_i[p], one seeded permutation per image shared by all latents.
    """
    rows, cols = grid
    patches = rows * cols
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be positive, got {grid}.")
    if adjacency not in ("rook", "queen"):
        raise ValueError(f"adjacency must be 'rook' or 'queen', got {adjacency!r}.")
    max_active = int(max_active_fraction * patches)
    w_PP = adjacency_matrix(grid, adjacency)
    weight_sum = float(w_PP.sum())
    if weight_sum == 0:
        raise ValueError(f"a {rows}x{cols} grid has no neighbouring patches.")

    rng = np.random.default_rng(seed)
    real, shuffled = _Accumulator(max_images_per_latent), _Accumulator(max_images_per_latent)
    n_images, d_sae = 0, None
    for block in blocks:
        if block.ndim != 3 or block.shape[1] != patches:
            raise ValueError(f"expected blocks [images, {patches} patches, d_sae], got {tuple(block.shape)}.")
        if d_sae is None:
            d_sae = block.shape[2]
        elif block.shape[2] != d_sae:
            raise ValueError(f"blocks disagree on d_sae: {d_sae} then {block.shape[2]}.")
        step = max(1, CHUNK_ELEMENTS // max(1, patches * d_sae))
        w_dev = w_PP.to(block.device)
        for start in range(0, block.shape[0], step):
            chunk = block[start : start + step]
            # numpy's stream is the same however the images are cut into blocks and chunks.
            perm_BP = torch.from_numpy(rng.random((chunk.shape[0], patches)).argsort(axis=1))
            out = _chunk_morans(chunk, w_dev, weight_sum, min_active, max_active, perm_BP.to(block.device))
            real.add(n_images, out.image, out.latent, out.real, d_sae)
            shuffled.add(n_images, out.image, out.latent, out.shuffled, d_sae)
            n_images += chunk.shape[0]
    d_sae = d_sae or 0

    details = {
        "grid": [rows, cols],
        "adjacency": adjacency,
        "min_active": min_active,
        "max_active": max_active,
        "max_active_fraction": max_active_fraction,
        "min_images": min_images,
        "max_images_per_latent": max_images_per_latent,
        "latents": d_sae,
        "localized_threshold": LOCALIZED,
    }
    real_table, shuffled_table = real.table(n_images, d_sae), shuffled.table(n_images, d_sae)
    real_stat = _memo(real_table.statistic(min_images))
    shuffled_stat = _memo(shuffled_table.statistic(min_images))
    real_scores = real_table.per_latent(min_images)
    base_scores = shuffled_table.per_latent(min_images)

    def boot(statistic: Callable[[np.ndarray], float]) -> stats.Estimate:
        return stats.bootstrap(statistic, n_images, resamples=resamples, seed=seed)

    summary = _summary(real_scores) | {"baseline_evaluable_latents": int(len(base_scores))}
    return [
        stats.Metric(
            "morans_i",
            "spatial",
            boot(lambda w: real_stat(w)[0]),
            True,
            baseline=boot(lambda w: shuffled_stat(w)[0]),
            baseline_name="shuffled patches",
            details=details | summary,
        ),
        stats.Metric(
            "localized_share",
            "spatial",
            boot(lambda w: real_stat(w)[1]),
            True,
            baseline=boot(lambda w: shuffled_stat(w)[1]),
            baseline_name="shuffled patches",
            details=details | {"evaluable_latents": summary["evaluable_latents"]},
        ),
    ]


def adjacency_matrix(grid: tuple[int, int], adjacency: Literal["rook", "queen"]) -> Float[Tensor, "p p"]:
    """Binary [P, P] neighbour matrix of a row-major grid: 4 neighbours (rook) or 8 (queen)."""
    rows, cols = grid
    r, c = np.divmod(np.arange(rows * cols), cols)
    dr, dc = np.abs(r[:, None] - r[None, :]), np.abs(c[:, None] - c[None, :])
    near = (dr <= 1) & (dc <= 1) if adjacency == "queen" else (dr + dc <= 1)
    near &= (dr + dc) > 0
    return torch.from_numpy(near.astype(np.float32))


@dataclasses.dataclass(frozen=True)
class _ChunkResult:
    """Valid (image, latent) pairs of one chunk with their Moran's I, real and shuffled."""

    image: np.ndarray
    latent: np.ndarray
    real: np.ndarray
    shuffled: np.ndarray


def _chunk_morans(
    codes_BPS: Float[Tensor, "b p s"],
    w_PP: Float[Tensor, "p p"],
    weight_sum: float,
    min_active: int,
    max_active: int,
    perm_BP: Tensor,
) -> _ChunkResult:
    """Moran's I of the pairs that pass the activity filters, computed only for those pairs.

    Codes are sparse, so most (image, latent) maps are filtered out by their active-patch count;
    gathering the survivors into rows [M, P] turns the quadratic form into one [M, P] x [P, P] product.
    Shuffling permutes a map's entries, which changes neither its count nor its variance, so only the
    surviving rows are shuffled (y[perm[p]] = x[p]), not the whole block.
    """
    codes_BPS = codes_BPS.float()
    patches = codes_BPS.shape[1]
    count_BS = (codes_BPS != 0).sum(dim=1, dtype=torch.int32)
    keep_BS = (count_BS >= min_active) & (count_BS <= max_active)
    x_MP = codes_BPS.transpose(1, 2)[keep_BS]
    x_MP = x_MP - x_MP.mean(dim=1, keepdim=True)
    denom_M = _rowdot(x_MP, x_MP)
    real_M = (patches / weight_sum) * _rowdot(x_MP @ w_PP, x_MP) / denom_M.clamp(min=VARIANCE_EPS)
    image, latent = keep_BS.nonzero(as_tuple=True)
    # y[perm[p]] = x[p] is y[q] = x[inverse[q]]: one gather, the same order for all of an image's rows.
    y_MP = x_MP.gather(1, torch.argsort(perm_BP, dim=1)[image])
    shuffled_M = (patches / weight_sum) * _rowdot(y_MP @ w_PP, y_MP) / denom_M.clamp(min=VARIANCE_EPS)
    flat = denom_M > VARIANCE_EPS
    return _ChunkResult(
        image[flat].cpu().numpy(),
        latent[flat].cpu().numpy(),
        real_M[flat].cpu().numpy(),
        shuffled_M[flat].cpu().numpy(),
    )


def _rowdot(a_MP: Tensor, b_MP: Tensor) -> Tensor:
    # A batched [1, P] x [P, 1] product is several times faster than (a * b).sum(1) on CPU.
    return torch.bmm(a_MP.unsqueeze(1), b_MP.unsqueeze(2)).reshape(-1)


class _Accumulator:
    """Valid pairs so far, applying the per-latent image cap in image order."""

    def __init__(self, cap: int | None):
        self.cap = cap
        self.count_S: np.ndarray | None = None
        self.images: list[np.ndarray] = []
        self.latents: list[np.ndarray] = []
        self.values: list[np.ndarray] = []

    def add(self, offset: int, image: np.ndarray, latent: np.ndarray, value: np.ndarray, d_sae: int) -> None:
        if self.count_S is None:
            self.count_S = np.zeros(d_sae, dtype=np.int64)
        if self.cap is not None:
            # Pairs are image-major: a pair's rank among its latent's valid images is the count so
            # far plus its position among this chunk's pairs of that latent.
            order = np.argsort(latent, kind="stable")
            sorted_latent = latent[order]
            starts = np.searchsorted(sorted_latent, sorted_latent, side="left")
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order)) - starts
            keep = self.count_S[latent] + rank < self.cap
            image, latent, value = image[keep], latent[keep], value[keep]
        np.add.at(self.count_S, latent, 1)
        self.images.append(image.astype(np.int64) + offset)
        self.latents.append(latent.astype(np.int32))
        self.values.append(value.astype(np.float32))

    def table(self, n_images: int, d_sae: int) -> "_Table":
        cat = lambda xs, dtype: np.concatenate(xs) if xs else np.zeros(0, dtype)  # noqa: E731
        image, latent = cat(self.images, np.int64), cat(self.latents, np.int32)
        value = cat(self.values, np.float32).astype(np.float64)
        shape = (d_sae, n_images)
        sums = scipy.sparse.csr_matrix((value, (latent, image)), shape=shape)
        counts = scipy.sparse.csr_matrix((np.ones_like(value), (latent, image)), shape=shape)
        return _Table(sums, counts)


@dataclasses.dataclass(frozen=True)
class _Table:
    """Per-(latent, image) Moran's I sums and valid counts, [S, N] sparse, for weighted means."""

    sums_SN: scipy.sparse.csr_matrix
    counts_SN: scipy.sparse.csr_matrix

    def per_latent(self, min_images: int, w_N: np.ndarray | None = None) -> np.ndarray:
        """Mean Moran's I of each evaluable latent (weighted images)."""
        w_N = np.ones(self.sums_SN.shape[1]) if w_N is None else w_N
        count_S = self.counts_SN @ w_N
        evaluable = (count_S >= min_images) & (count_S > 0)
        return (self.sums_SN @ w_N)[evaluable] / count_S[evaluable]

    def statistic(self, min_images: int) -> Callable[[np.ndarray], tuple[float, float]]:
        def compute(w_N: np.ndarray) -> tuple[float, float]:
            scores = self.per_latent(min_images, w_N)
            if not len(scores):
                return math.nan, math.nan
            return float(scores.mean()), float((scores > LOCALIZED).mean())

        return compute


def _summary(scores: np.ndarray) -> dict[str, Any]:
    if not len(scores):
        return {"evaluable_latents": 0, "median": None, "p25": None, "p75": None}
    p25, median, p75 = np.percentile(scores, [25, 50, 75])
    return {
        "evaluable_latents": int(len(scores)),
        "median": float(median),
        "p25": float(p25),
        "p75": float(p75),
    }


def _memo(compute: Callable[[np.ndarray], tuple[float, ...]]) -> Callable[[np.ndarray], tuple[float, ...]]:
    """`compute` remembered per weight vector, so metrics sharing a resample compute it once."""
    cache: dict[bytes, tuple[float, ...]] = {}

    def get(w_N: np.ndarray) -> tuple[float, ...]:
        key = hashlib.blake2b(np.ascontiguousarray(w_N).tobytes(), digest_size=16).digest()
        if key not in cache:
            cache[key] = compute(w_N)
        return cache[key]

    return get

"""Feature absorption (SAEBench, Karvonen et al. 2025, as visaebench adapts it to images).

A parent latent "absorbs" a child concept when the child has no latent of its own and is only
represented through the parent's. For every group of sibling classes (children of one parent) and
every child, two signals, computed exactly as visaebench's M7 (FeatureAbsorption):

- overlap: Jaccard similarity of the child's top-k latents and the whole group's top-k latents,
  both ranked by mean activation; a child sharing most of its latents with the group has none of
  its own.
- F1 gap: a logistic regression separating the child from its siblings on the top `k_expanded`
  latents (by F-statistic) minus one on the top `k_primary`, both fit and scored on the group's
  items; a large gain means no single latent singles the child out.

A (group, child) pair is absorbed when the gap exceeds `threshold` or the overlap exceeds 0.5.
"""

import dataclasses
import hashlib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import sklearn
import threadpoolctl
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import f_classif
from sklearn.linear_model import LogisticRegression

from saev.bench import stats

MAX_RESAMPLES = 50
"""Each resample refits two regressions per pair, so the interval uses at most this many resamples."""
MIN_GROUP_ITEMS = 10
"""visaebench skips groups with fewer items in all."""
OVERLAP = 0.5
"""visaebench's overlap above which a pair is absorbed."""


@dataclasses.dataclass(frozen=True)
class Hierarchy:
    """Items labelled with classes, and which classes are siblings under which parent."""

    classes: tuple[str, ...]
    labels_N: np.ndarray
    """Class index of each item (a row of the codes), -1 for none."""
    groups: Mapping[str, Sequence[int]]
    """Parent name -> its child class indices."""


def absorption(
    codes_NS: np.ndarray,
    hierarchies: Sequence[Hierarchy],
    *,
    top_k: int = 10,
    k_primary: int = 1,
    k_expanded: int = 4,
    threshold: float = 0.1,
    min_group_size: int = 2,
    min_items: int = 3,
    resamples: int = stats.RESAMPLES,
    seed: int = 0,
    unit: str = "images",
) -> list[stats.Metric]:
    """`absorption_rate`, `absorption_f1_gap` and `absorption_overlap` over all (group, child) pairs.

    `codes_NS` has one row per item (an image's pooled codes, or an object's); every hierarchy's
    labels index those rows. Groups with fewer than `min_group_size` children or fewer than 10 items
    are skipped, and children with fewer than `min_items` items in the group or outside it. The
    interval resamples items and refits, with min(resamples, 50) resamples; `unit` names the items.
    """
    n_items = len(codes_NS)
    for h in hierarchies:
        if np.shape(h.labels_N) != (n_items,):
            raise ValueError(f"hierarchy labels have shape {np.shape(h.labels_N)}, expected ({n_items},).")
    config = _Config(top_k, k_primary, k_expanded, threshold, min_group_size, min_items, seed)

    def all_pairs(w_N: np.ndarray) -> list[dict[str, Any]]:
        # A resample is its items with repeats: repeated rows weigh in means, F-statistics and fits alike.
        rows = np.repeat(np.arange(n_items), w_N.astype(np.int64))
        codes = codes_NS[rows]
        # Thousands of fits on a few latents: BLAS threads and sklearn's input checks only slow them.
        with threadpoolctl.threadpool_limits(1), sklearn.config_context(skip_parameter_validation=True):
            return [p for i, h in enumerate(hierarchies) for p in _pairs(codes, h, i, rows, config)]

    pairs = all_pairs(np.ones(n_items))
    shared = _memo(lambda w: _summary(all_pairs(w)))
    shared(np.ones(n_items), _summary(pairs))
    used = min(resamples, MAX_RESAMPLES)

    def boot(i: int) -> stats.Estimate:
        return stats.bootstrap(lambda w: shared(w)[i], n_items, resamples=used, seed=seed, unit=unit)

    details: dict[str, Any] = {
        "pairs": len(pairs),
        "absorbed": int(sum(p["absorbed"] for p in pairs)),
        "resamples": used,
        "top_k": top_k,
        "k_primary": k_primary,
        "k_expanded": k_expanded,
        "threshold": threshold,
        "overlap_threshold": OVERLAP,
        "min_group_size": min_group_size,
        "min_items": min_items,
        "min_group_items": MIN_GROUP_ITEMS,
    }
    return [
        stats.Metric("absorption_rate", "absorption", boot(0), False, details=details | {"per_pair": pairs}),
        stats.Metric("absorption_f1_gap", "absorption", boot(1), False, details=details),
        stats.Metric("absorption_overlap", "absorption", boot(2), False, details=details),
    ]


@dataclasses.dataclass(frozen=True)
class _Config:
    top_k: int
    k_primary: int
    k_expanded: int
    threshold: float
    min_group_size: int
    min_items: int
    seed: int


def _pairs(codes_MS: np.ndarray, h: Hierarchy, index: int, rows_M: np.ndarray, cfg: _Config) -> list[dict]:
    """visaebench's per-(group, child) test on the items `rows_M` (with repeats) whose codes are given."""
    labels_M = np.asarray(h.labels_N)[rows_M]
    out = []
    for parent, children in h.groups.items():
        if len(children) < cfg.min_group_size:
            continue
        in_group = np.isin(labels_M, children)
        if in_group.sum() < MIN_GROUP_ITEMS:
            continue
        group_codes = codes_MS[in_group]
        group_labels = labels_M[in_group]
        group_top = set(np.argsort(group_codes.mean(axis=0))[-cfg.top_k :])
        for child in children:
            positive = (group_labels == child).astype(np.int64)
            n_pos = int(positive.sum())
            if n_pos < cfg.min_items or len(positive) - n_pos < cfg.min_items:
                continue
            child_top = set(np.argsort(group_codes[positive == 1].mean(axis=0))[-cfg.top_k :])
            union = len(child_top | group_top)
            overlap = len(child_top & group_top) / union if union else 0.0
            with warnings.catch_warnings():
                # Latents constant over the group have no F-statistic (NaN, ranked last).
                warnings.simplefilter("ignore", RuntimeWarning)
                warnings.simplefilter("ignore", UserWarning)
                f_scores, _ = f_classif(group_codes, positive)
            ranked = np.argsort(np.nan_to_num(f_scores, nan=-np.inf))[::-1]
            f1_primary = _probe_f1(group_codes, positive, ranked[: cfg.k_primary], cfg.seed)
            f1_expanded = _probe_f1(group_codes, positive, ranked[: cfg.k_expanded], cfg.seed)
            gap = f1_expanded - f1_primary
            out.append(
                {
                    "hierarchy": index,
                    "group": parent,
                    "child": h.classes[child] if 0 <= child < len(h.classes) else str(child),
                    "class_index": int(child),
                    "overlap": overlap,
                    "f1_primary": f1_primary,
                    "f1_expanded": f1_expanded,
                    "f1_gap": gap,
                    "absorbed": bool(gap > cfg.threshold or overlap > OVERLAP),
                    "n_positive": n_pos,
                }
            )
    return out


def _probe_f1(x_MS: np.ndarray, y_M: np.ndarray, latents: np.ndarray, seed: int) -> float:
    """Training-set F1 of a logistic regression on `latents`, as visaebench scores its probes."""
    clf = LogisticRegression(solver="lbfgs", max_iter=500, C=1.0, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_MS[:, latents], y_M)
    pred = clf.predict(x_MS[:, latents])
    # sklearn's binary F1 with zero_division=0, same arithmetic (2 tp / (true + predicted)),
    # without its input validation, which costs more than the fit on a few latents.
    tp, total = float(np.sum((pred == 1) & (y_M == 1))), float(np.sum(y_M == 1) + np.sum(pred == 1))
    return 2 * tp / total if total else 0.0


def _summary(pairs: list[dict[str, Any]]) -> tuple[float, float, float]:
    """Absorbed share, mean F1 gap and mean overlap; NaN without pairs."""
    if not pairs:
        return math.nan, math.nan, math.nan
    return (
        float(np.mean([p["absorbed"] for p in pairs])),
        float(np.mean([p["f1_gap"] for p in pairs])),
        float(np.mean([p["overlap"] for p in pairs])),
    )


def _memo(
    compute: Callable[[np.ndarray], tuple[float, ...]],
) -> Callable[..., tuple[float, ...]]:
    """`compute` remembered per weight vector: the three metrics share every resample.
    `get(w, value)` stores a value already known."""
    cache: dict[bytes, tuple[float, ...]] = {}

    def get(w_N: np.ndarray, value: tuple[float, ...] | None = None) -> tuple[float, ...]:
        key = hashlib.blake2b(np.ascontiguousarray(w_N).tobytes(), digest_size=16).digest()
        if value is not None:
            cache[key] = value
        if key not in cache:
            cache[key] = compute(w_N)
        return cache[key]

    return get

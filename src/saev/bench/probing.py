"""k-sparse probes: can k SAE latents, chosen per concept, classify images as well as the dense ViT can?

For every labelling task the images are split once into train and test. The k latents with the
highest ANOVA F-statistic on the train split feed a logistic regression, scored on the test split;
the dense baseline is the same regression on all standardised ViT dimensions. A good SAE reaches
the dense accuracy with few latents; `faithfulness_gap` is how far the largest k stays below it.

`visaebench_auc` is visaebench's M4 number exactly, for comparison with published results.
"""

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse
import threadpoolctl
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from saev.bench import stats

MIN_IMAGES = 10
"""Tasks with fewer labelled images are skipped: a 20% test split of them says nothing."""
DENSE_NAME = "dense probe on ViT activations"


def sparse_probing(
    pooled_NS: np.ndarray,
    dense_ND: np.ndarray,
    tasks: Mapping[str, np.ndarray],
    *,
    ks: Sequence[int] = (1, 2, 5, 20),
    test_size: float = 0.2,
    resamples: int = stats.RESAMPLES,
    seed: int = 0,
) -> list[stats.Metric]:
    """`probe_k{k}` for each k and `faithfulness_gap`, mean test accuracy over `tasks`.

    `pooled_NS` holds per-image max-pooled SAE codes, `dense_ND` per-image mean-pooled ViT
    activations. Each task maps every image to a class index (binary 0/1 for one concept, or
    exclusive classes), -1 for images outside the task. The split is stratified when every class
    has two members; latents are ranked by f_classif on the train split only, so the test images
    never choose the features. (visaebench's M4, `visaebench_auc`, ranks on all images, which lets
    the test labels pick the features; it is reported in the details, with this call's seed, for
    tasks of more than two classes.) The interval resamples test images: an image in several
    tasks' test splits carries one weight in all of them.
    """
    if pooled_NS.ndim != 2 or dense_ND.ndim != 2 or len(pooled_NS) != len(dense_ND):
        raise ValueError(f"expected [N, S] and [N, D] arrays, got {pooled_NS.shape} and {dense_ND.shape}.")
    n_images = len(pooled_NS)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive, got {ks}.")

    results: list[_Task] = []
    skipped: dict[str, str] = {}
    auc: dict[str, float | None] = {}
    for name, labels in tasks.items():
        labels_N = np.asarray(labels)
        if labels_N.shape != (n_images,):
            raise ValueError(f"task {name!r}: expected {n_images} labels, got shape {labels_N.shape}.")
        # Small fits: BLAS threads only add overhead, and on a busy machine they spin (10x slower).
        with threadpoolctl.threadpool_limits(1):
            task, reason = _probe_task(pooled_NS, dense_ND, labels_N.astype(np.int64), ks, test_size, seed)
        if task is None:
            skipped[name] = reason
            continue
        results.append(task)
        if task.classes > 2:
            idx = np.flatnonzero(labels_N >= 0)
            try:
                with threadpoolctl.threadpool_limits(1):
                    auc[name] = visaebench_auc(pooled_NS[idx], labels_N[idx].astype(np.int64), seed=seed)
            except ValueError:  # e.g. a stratified test split smaller than the class count
                auc[name] = None

    names = [name for name in tasks if name not in skipped]
    # Bootstrap units: the images in at least one test split, renumbered 0..n-1.
    units = np.unique(np.concatenate([t.test for t in results])) if results else np.zeros(0, np.int64)
    columns = [np.searchsorted(units, t.test) for t in results]
    member_TU = _rows(columns, [np.ones(len(t.test)) for t in results], len(units))

    def mean_accuracy(correct: list[np.ndarray]) -> Callable[[np.ndarray], float]:
        correct_TU = _rows(columns, correct, len(units))

        def statistic(w_U: np.ndarray) -> float:
            total_T = member_TU @ w_U
            present = total_T > 0
            return (
                float(np.mean((correct_TU @ w_U)[present] / total_T[present])) if present.any() else math.nan
            )

        return statistic

    def boot(statistic: Callable[[np.ndarray], float]) -> stats.Estimate:
        return stats.bootstrap(statistic, len(units), resamples=resamples, seed=seed)

    dense_stat = mean_accuracy([t.dense for t in results])
    dense = boot(dense_stat)
    common: dict[str, Any] = {
        "tasks": len(results),
        "skipped": skipped,
        "test_size": test_size,
        "ranking": "f_classif on the train split",
        "dense_accuracy": {n: float(t.dense.mean()) for n, t in zip(names, results, strict=True)},
        "visaebench_auc": auc,
    }
    metrics = []
    for k in ks:
        metrics.append(
            stats.Metric(
                f"probe_k{k}",
                "probing",
                boot(mean_accuracy([t.sparse[k] for t in results])),
                True,
                baseline=dense,
                baseline_name=DENSE_NAME,
                details=common
                | {
                    "k": k,
                    "latents_used": min(k, pooled_NS.shape[1]),
                    "accuracy": {n: float(t.sparse[k].mean()) for n, t in zip(names, results, strict=True)},
                },
            )
        )
    top_stat = mean_accuracy([t.sparse[ks[-1]] for t in results])
    metrics.append(
        stats.Metric(
            "faithfulness_gap",
            "probing",
            boot(lambda w: dense_stat(w) - top_stat(w)),
            False,
            details={"k": ks[-1], "tasks": len(results), "skipped": skipped},
        )
    )
    return metrics


def visaebench_auc(
    pooled_NS: np.ndarray,
    labels_N: np.ndarray,
    ks: Sequence[int] = (1, 5, 10, 20, 50, 100),
    test_size: float = 0.2,
    seed: int = 42,
) -> float:
    """visaebench's M4 sparse-probing AUC, step for step.

    Latents are ranked by f_classif on all images (test labels included), the split is stratified
    unless some label value in 0..max has fewer than two images, one logistic regression per k
    (k above the latent count dropped), and the accuracy curve's trapezoid area over k divided by
    the k range. Labels must be non-negative integers.
    """
    labels_N = np.asarray(labels_N, dtype=np.int64)
    with _quiet():
        f_scores, _ = f_classif(pooled_NS, labels_N)
    ranked = np.argsort(np.nan_to_num(f_scores, nan=-np.inf))[::-1]
    stratify = labels_N if np.min(np.bincount(labels_N)) >= 2 else None
    x_train, x_test, y_train, y_test = train_test_split(
        pooled_NS, labels_N, test_size=test_size, stratify=stratify, random_state=seed
    )
    accuracy = {}
    for k in [k for k in sorted(ks) if k <= pooled_NS.shape[1]]:
        clf = LogisticRegression(solver="lbfgs", max_iter=500, C=1.0, random_state=seed)
        with _quiet():
            clf.fit(x_train[:, ranked[:k]], y_train)
        accuracy[k] = float(clf.score(x_test[:, ranked[:k]], y_test))
    xs = sorted(accuracy)
    if len(xs) > 1:
        return float(np.trapezoid([accuracy[k] for k in xs], x=xs) / (xs[-1] - xs[0]))
    return accuracy[xs[0]] if xs else 0.0


@dataclasses.dataclass(frozen=True)
class _Task:
    """One task's test images and per-test-image correctness (0/1) of each probe."""

    test: np.ndarray
    classes: int
    sparse: dict[int, np.ndarray]
    """k -> correctness of the k-latent probe."""
    dense: np.ndarray


def _probe_task(
    pooled_NS: np.ndarray,
    dense_ND: np.ndarray,
    labels_N: np.ndarray,
    ks: list[int],
    test_size: float,
    seed: int,
) -> tuple["_Task | None", str]:
    idx = np.flatnonzero(labels_N >= 0)
    y = labels_N[idx]
    classes, counts = np.unique(y, return_counts=True)
    if len(idx) < MIN_IMAGES:
        return None, f"{len(idx)} labelled images (under {MIN_IMAGES})"
    if len(classes) < 2:
        return None, "fewer than 2 classes present"
    stratify = y if counts.min() >= 2 else None
    try:
        train, test, y_train, y_test = train_test_split(
            idx, y, test_size=test_size, stratify=stratify, random_state=seed
        )
    except ValueError:
        # A test split smaller than the class count cannot be stratified.
        train, test, y_train, y_test = train_test_split(idx, y, test_size=test_size, random_state=seed)
    if len(np.unique(y_train)) < 2:
        return None, "the train split holds one class"

    x_train = pooled_NS[train]
    with _quiet():
        f_scores, _ = f_classif(x_train, y_train)
    ranked = np.argsort(np.nan_to_num(f_scores, nan=-np.inf))[::-1]
    sparse = {}
    for k in ks:
        top = ranked[:k]
        clf = LogisticRegression(solver="lbfgs", max_iter=500, C=1.0, random_state=seed)
        with _quiet():
            clf.fit(x_train[:, top], y_train)
        sparse[k] = (clf.predict(pooled_NS[test][:, top]) == y_test).astype(np.float64)

    scaler = StandardScaler().fit(dense_ND[train])
    clf = LogisticRegression(solver="lbfgs", max_iter=1000, C=1.0, random_state=seed)
    with _quiet():
        clf.fit(scaler.transform(dense_ND[train]), y_train)
    dense = (clf.predict(scaler.transform(dense_ND[test])) == y_test).astype(np.float64)
    return _Task(np.asarray(test), len(classes), sparse, dense), ""


def _rows(columns: list[np.ndarray], values: list[np.ndarray], n_cols: int) -> scipy.sparse.csr_matrix:
    """[T, n_cols] sparse matrix whose row t holds values[t] at columns[t]."""
    if not columns:
        return scipy.sparse.csr_matrix((0, n_cols))
    row = np.concatenate([np.full(len(c), t) for t, c in enumerate(columns)])
    return scipy.sparse.csr_matrix(
        (np.concatenate(values), (row, np.concatenate(columns))), (len(columns), n_cols)
    )


class _quiet(warnings.catch_warnings):
    """Silences what small probes say routinely: constant latents (f_classif) and slow convergence."""

    def __enter__(self):
        out = super().__enter__()
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        return out

"""Concept detection (network dissection) with patch masks: how well one latent, thresholded, finds
the patches showing a concept.

The detector is `concepts.best_detectors`' with `include_zero=True`: per concept, every latent
with every threshold among 0 and the `concepts.QUANTILES` of its codes on the selection images'
patches; the best by F1 there is scored on the other images. The numbers are the same as
`best_detectors` (a test checks it), but nothing dense is kept: each block's codes are stored
sparse (codes are non-negative and mostly zero), sorted once by (latent, value). A quantile is
then an index into a latent's sorted codes, and the patches above any threshold are a suffix of
them, so every (threshold, latent, concept) count on the selection images comes from one cumulative
sum per concept. Memory is ~16 bytes per nonzero code (twice that while sorting): 3,000 images x
64 patches x 32 active latents is ~100 MB, against 786 MB for the dense codes at 1,024 latents.

On the scoring images each chosen detector gives per-image TP, FP and FN counts, and the
bootstrap over scoring images recomputes F1 = 2TP / (2TP + FP + FN) and IoU = TP / (TP + FP + FN)
from their weighted sums.
"""

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from saev.bench import stats
from saev.concepts import QUANTILES

DEFINITION = (
    "per concept, the latent and threshold (0 or a quantile of its codes) whose detector code > threshold "
    "has the best patch F1 on the selection images, scored on the other images; mean over the concepts "
    "the scoring images show"
)


class _Patches:
    """The nonzero codes of one set of images, sorted by (latent, value), with the patch masks."""

    def __init__(self) -> None:
        self._keys: list[np.ndarray] = []
        self._patches: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        self.n_images = 0

    def add(self, codes_BPS: Tensor, masks_BPC: Tensor) -> None:
        b, p, s = codes_BPS.shape
        flat = codes_BPS.detach().reshape(b * p, s)
        rows, cols = (flat > 0).nonzero(as_tuple=True)
        vals = flat[rows, cols].float().cpu().numpy()
        # Positive float32s order like their bit patterns, so (latent, value) packs into one sortable key.
        self._keys.append((cols.cpu().numpy().astype(np.uint64) << np.uint64(32)) | vals.view(np.uint32))
        if (self.n_images + b) * p >= 2**31:
            raise ValueError("detection scores at most 2^31 patches per set of images.")
        self._patches.append((rows.cpu().numpy() + self.n_images * p).astype(np.int32))
        self._masks.append(masks_BPC.detach().reshape(b * p, masks_BPC.shape[-1]).cpu().numpy().astype(bool))
        self.n_images += b

    def freeze(self, n_latents: int, n_concepts: int) -> None:
        keys = np.concatenate(self._keys) if self._keys else np.zeros(0, np.uint64)
        patches = np.concatenate(self._patches) if self._patches else np.zeros(0, np.int32)
        order = np.argsort(keys)
        self.keys, self.patches = keys[order], patches[order]
        self.values = (self.keys & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32)
        self.masks_XC = np.concatenate(self._masks) if self._masks else np.zeros((0, n_concepts), bool)
        # bounds_S1[s]: where latent s's codes start (and s-1's end).
        self.bounds_S1 = np.searchsorted(
            self.keys, np.arange(n_latents + 1, dtype=np.uint64) << np.uint64(32)
        )
        self._keys, self._patches, self._masks = [], [], []

    @property
    def n_patches(self) -> int:
        return len(self.masks_XC)

    def above(self, latents: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        """Index of the first code of each latent above its (non-negative float32) threshold."""
        thr = np.asarray(thresholds, np.float32) + np.float32(0)  # -0.0 -> +0.0 for the bit pattern
        key = (np.asarray(latents).astype(np.uint64) << np.uint64(32)) | thr.view(np.uint32)
        return np.searchsorted(self.keys, key, side="right")

    def quantiles(self, n_latents: int) -> np.ndarray:
        """[Q, S] `torch.quantile(codes, QUANTILES, dim=0)` of every latent's codes on these patches
        (zeros included), computed as torch does from the sorted nonzero codes."""
        # torch.quantile ranks in float64 (of the float32 quantiles best_detectors passes) and lerps in float32.
        ranks_Q = torch.tensor(QUANTILES).double() * (self.n_patches - 1)
        below_Q, above_Q = ranks_Q.long(), ranks_Q.ceil().long()
        zeros_S = self.n_patches - np.diff(self.bounds_S1)

        def order_stat(rank_Q: Tensor) -> Tensor:
            pos_QS = rank_Q.numpy()[:, None] - zeros_S[None, :]
            idx_QS = self.bounds_S1[None, :-1] + np.maximum(pos_QS, 0)
            idx_QS = np.minimum(idx_QS, max(len(self.values) - 1, 0))
            picked = self.values[idx_QS] if len(self.values) else np.zeros(idx_QS.shape, np.float32)
            return torch.from_numpy(np.where(pos_QS >= 0, picked, np.float32(0)))

        weight_QS = (ranks_Q - below_Q).float()[:, None].expand(len(QUANTILES), n_latents)
        return torch.lerp(order_stat(below_Q), order_stat(above_Q), weight_QS).numpy()


def detection(
    # "_images": blocks differ in size (a named axis would have to agree across the blocks).
    blocks: Iterable[tuple[Float[Tensor, "_images patches d_sae"], Bool[Tensor, "_images patches concepts"]]],
    concepts: Sequence[str],
    *,
    select: np.ndarray | None = None,
    resamples: int = stats.RESAMPLES,
    seed: int = 0,
) -> list[stats.Metric]:
    """`detection_f1` and `detection_iou`: mean over concepts of the best single-latent detector's
    patch F1 and IoU on the scoring images, against the same detector on a random live latent.

    `blocks`: consecutive images' codes (non-negative) and patch concept masks, read once.
    `select` [N]: images that choose each concept's latent and threshold; the others score it
    (default: even images choose, odd ones score, as `concepts.score_store`).
    Details: per concept {latent, threshold, f1, iou, precision, recall, patches, selection_f1};
    `latents` maps each concept to its latent (as `best_detectors`, latent 0 at threshold 0 when no
    detector finds any of the concept's selection patches: selection_f1 is then 0).
    """
    names = list(concepts)
    if len(set(names)) != len(names):
        raise ValueError(f"concept names repeat: {names}.")
    chosen, scored = _Patches(), _Patches()
    n_images, shape = 0, None
    for codes_BPS, masks_BPC in blocks:
        b, p, s = codes_BPS.shape
        if masks_BPC.shape != (b, p, len(names)):
            raise ValueError(
                f"masks {tuple(masks_BPC.shape)} do not match codes {(b, p, s)} and {len(names)} concepts."
            )
        if shape not in (None, (p, s)):
            raise ValueError(f"blocks disagree on (patches, latents): {shape} then {(p, s)}.")
        if (codes_BPS < 0).any() or not torch.isfinite(codes_BPS).all():
            raise ValueError("codes must be finite and non-negative (a latent fires when its code is > 0).")
        shape = (p, s)
        ids = np.arange(n_images, n_images + b)
        if select is None:
            sel_B = ids % 2 == 0
        elif n_images + b > len(select):
            raise ValueError(f"select has {len(select)} images; the blocks have more.")
        else:
            sel_B = np.asarray(select[n_images : n_images + b], dtype=bool)
        sel_t = torch.from_numpy(sel_B).to(codes_BPS.device)
        chosen.add(codes_BPS[sel_t], masks_BPC[sel_t.to(masks_BPC.device)])
        scored.add(codes_BPS[~sel_t], masks_BPC[~sel_t.to(masks_BPC.device)])
        n_images += b
    if select is not None and len(select) != n_images:
        raise ValueError(f"select has {len(select)} images; the blocks have {n_images}.")
    if shape is None or not chosen.n_images or not scored.n_images:
        return _undefined(
            names, scored.n_images, "no selection images" if scored.n_images else "no scoring images"
        )
    n_patches, n_latents = shape
    chosen.freeze(n_latents, len(names))
    scored.freeze(n_latents, len(names))

    thr_QS, f1_QSC = _selection_f1(chosen, n_latents)
    # Per (latent, concept): the first best threshold; then the first best latent (best_detectors' ties).
    best_q_SC = f1_QSC.argmax(0)
    best_f1_SC = np.take_along_axis(f1_QSC, best_q_SC[None], 0)[0]
    latent_C = best_f1_SC.argmax(0)
    c_idx = np.arange(len(names))
    thr_C = thr_QS[best_q_SC[latent_C, c_idx], latent_C]

    rng = np.random.default_rng(seed)
    live = np.flatnonzero(np.diff(chosen.bounds_S1) > 0)
    rand_C = rng.choice(live, len(names)) if len(live) else None

    actual_NC = scored.masks_XC.reshape(scored.n_images, n_patches, -1).sum(1).astype(np.float64)
    counts = _counts(scored, n_patches, latent_C, thr_C, actual_NC)
    shown = actual_NC.sum(0) > 0
    details: dict[str, Any] = {
        "definition": DEFINITION,
        "selection_images": chosen.n_images,
        "scoring_images": scored.n_images,
        "concepts": {
            name: _per_concept(int(latent_C[c]), float(thr_C[c]), *(x[:, c].sum() for x in counts))
            | {"selection_f1": float(best_f1_SC[latent_C[c], c])}
            for c, name in enumerate(names)
        },
        "latents": {name: int(latent_C[c]) for c, name in enumerate(names)},
        "scored_concepts": [name for c, name in enumerate(names) if shown[c]],
    }
    base: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    if rand_C is not None:
        base_thr_C = thr_QS[best_q_SC[rand_C, c_idx], rand_C]
        base = _counts(scored, n_patches, rand_C, base_thr_C, actual_NC)
        details["baseline_latents"] = {name: int(rand_C[c]) for c, name in enumerate(names)}

    def estimate(tp_fp_fn: tuple[np.ndarray, np.ndarray, np.ndarray], score: Callable) -> stats.Estimate:
        return stats.bootstrap(
            _mean_over(tp_fp_fn, shown, score), scored.n_images, resamples=resamples, seed=seed
        )

    return [
        stats.Metric(
            name,
            "detection",
            estimate(counts, score),
            True,
            None if base is None else estimate(base, score),
            "random latent",
            details,
        )
        for name, score in (("detection_f1", _f1), ("detection_iou", _iou))
    ]


def _selection_f1(chosen: _Patches, n_latents: int) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds [Q+1, S] (0, then the quantiles) and the F1 [Q+1, S, C] of every detector on the
    selection patches, in float32 as `best_detectors` computes it (so ties break the same way)."""
    thr_QS = np.concatenate([np.zeros((1, n_latents), np.float32), chosen.quantiles(n_latents)])
    latents_QS = np.broadcast_to(np.arange(n_latents), thr_QS.shape)
    start_QS = chosen.above(latents_QS, thr_QS)
    end_S = chosen.bounds_S1[1:]
    pred_QS = end_S[None] - start_QS
    f1 = []
    for c in range(chosen.masks_XC.shape[1]):
        mask = chosen.masks_XC[:, c]
        # cum[i]: masked patches among the first i sorted codes, so a suffix's TP is a difference.
        cum = np.concatenate([[0], np.cumsum(mask[chosen.patches], dtype=np.int64)])
        tp_QS = cum[end_S][None] - cum[start_QS]
        denom = torch.from_numpy(pred_QS + int(mask.sum())).clamp_min(1).float()
        f1.append((torch.from_numpy(2 * tp_QS).float() / denom).numpy())
    return thr_QS, np.stack(f1, axis=-1)


def _counts(
    scored: _Patches, n_patches: int, latent_C: np.ndarray, thr_C: np.ndarray, actual_NC: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per scoring image and concept, TP, FP and FN of detector `code[latent] > threshold`."""
    tp_NC, pred_NC = np.zeros_like(actual_NC), np.zeros_like(actual_NC)
    start_C = scored.above(latent_C, thr_C)
    for c, (lo, hi) in enumerate(zip(start_C, scored.bounds_S1[latent_C + 1], strict=True)):
        patches = scored.patches[lo:hi]
        image = patches // n_patches
        tp_NC[:, c] = np.bincount(image, scored.masks_XC[patches, c], minlength=scored.n_images)
        pred_NC[:, c] = np.bincount(image, minlength=scored.n_images)
    return tp_NC, pred_NC - tp_NC, actual_NC - tp_NC


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return 2 * tp, 2 * tp + fp + fn


def _iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return tp, tp + fp + fn


def _mean_over(
    counts: tuple[np.ndarray, np.ndarray, np.ndarray], shown_C: np.ndarray, score: Callable
) -> Callable[[np.ndarray], float]:
    """Statistic: mean over the shown concepts of score(weighted TP, FP, FN); a concept whose score
    is undefined in a resample (no patches, no predictions) is left out of that resample's mean."""
    tp_NC, fp_NC, fn_NC = (x[:, shown_C] for x in counts)

    def statistic(w_N: np.ndarray) -> float:
        num, den = score(w_N @ tp_NC, w_N @ fp_NC, w_N @ fn_NC)
        ok = den > 0
        return float((num[ok] / den[ok]).mean()) if ok.any() else np.nan

    return statistic


def _per_concept(latent: int, threshold: float, tp: float, fp: float, fn: float) -> dict[str, Any]:
    def ratio(num: float, den: float) -> float | None:
        return num / den if den > 0 else None

    return {
        "latent": latent,
        "threshold": threshold,
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "patches": int(tp + fn),
    }


def _undefined(names: list[str], n: int, reason: str) -> list[stats.Metric]:
    empty = stats.Estimate(None, None, None, n)
    details = {"definition": DEFINITION, "reason": reason, "latents": {}}
    return [
        stats.Metric(name, "detection", empty, True, details=details)
        for name in ("detection_f1", "detection_iou")
    ]

"""Monosemanticity score (Pach et al. 2025): do a latent's top images look alike to another model?

For each live latent, its top-k images by max-pooled activation are embedded by an evaluator
model (one that did not produce the SAE's inputs, so closeness is not inherited); the score is their
activation-weighted mean pairwise cosine similarity,
MS = sum_{a<b} w_a w_b cos(e_a, e_b) / sum_{a<b} w_a w_b, with w the activation min-max normalised
over all images. The number is the mean MS over latents; it agrees with visaebench's M5
(MonosemanticityScore) on the same codes and embeddings.
"""

import math

import numpy as np
import torch

from saev.bench import stats

CANDIDATES = 4
"""Each latent keeps its CANDIDATES * top_k highest (and lowest) images: a resample's top-k and
min-max range come from them unless nearly all of them were left out, which is computed in full."""
GRAM_LATENTS = 256
"""Latents whose candidate embeddings are gathered at once (bounds memory to 256 x 4k x E floats)."""


def monosemanticity(
    pooled_NS: np.ndarray,
    embeddings_NE: np.ndarray,
    *,
    top_k: int = 16,
    max_latents: int | None = 1000,
    resamples: int = stats.RESAMPLES,
    seed: int = 0,
) -> stats.Metric:
    """Mean monosemanticity of live latents (max pooled activation > 0), with a random-images baseline.

    `pooled_NS` holds per-image max-pooled SAE codes, `embeddings_NE` the evaluator's per-image
    embeddings (any scale; they are L2-normalised). When more than `max_latents` latents are live,
    `np.random.RandomState(seed).choice` picks that many, as visaebench does. Latents whose
    weights give no positive pair weight (a single image above the minimum) are left out.

    A bootstrap resample is the multiset of images it draws: an image drawn m times fills m of the
    k top slots (so its pairs count m times), undrawn images can neither enter the top-k nor set the
    min-max range, and an image is never paired with its own copies. (Pairing copies, cosine 1,
    would bias every resample upward: with k = 16 of thousands of images a few duplicates are
    typical.) The baseline is the expected score of k uniformly random images with equal weights,
    which is the mean cosine over pairs of distinct images, computed exactly rather than by drawing
    images (resamples weight each pair by its images' copies, as above).
    """
    if pooled_NS.ndim != 2 or embeddings_NE.ndim != 2 or len(pooled_NS) != len(embeddings_NE):
        raise ValueError(
            f"expected [N, S] and [N, E] arrays, got {pooled_NS.shape} and {embeddings_NE.shape}."
        )
    n_images, d_sae = pooled_NS.shape
    alive = np.flatnonzero(pooled_NS.max(axis=0) > 0) if n_images else np.zeros(0, np.int64)
    if max_latents is not None and len(alive) > max_latents:
        alive = np.sort(np.random.RandomState(seed).choice(alive, size=max_latents, replace=False))

    emb = torch.nn.functional.normalize(torch.as_tensor(embeddings_NE, dtype=torch.float32), dim=1)
    scorer = _Scorer(np.asarray(pooled_NS[:, alive], dtype=np.float64), emb, min(top_k, n_images))
    emb64 = emb.double().numpy()
    self_NN = (emb64 * emb64).sum(axis=1)

    def random_images(w_N: np.ndarray) -> float:
        # Ordered pairs of distinct images, each weighted by its copies: sum_{i != j} w_i w_j cos_ij.
        v_E, pairs = w_N @ emb64, w_N.sum() ** 2 - w_N @ w_N
        return float((v_E @ v_E - (w_N * w_N) @ self_NN) / pairs) if pairs > 0 else math.nan

    details = {
        "top_k": top_k,
        "max_latents": max_latents,
        "live_latents": int((pooled_NS.max(axis=0) > 0).sum()) if n_images else 0,
        "scored_latents": int(len(alive)),
        "latents": d_sae,
        "baseline": "expected score of k uniformly random images (mean cosine over image pairs)",
    }
    scores = scorer.scores(np.ones(n_images))
    details["scored_with_pairs"] = int(np.isfinite(scores).sum())
    return stats.Metric(
        "monosemanticity",
        "monosemanticity",
        stats.bootstrap(scorer.statistic, n_images, resamples=resamples, seed=seed),
        True,
        baseline=stats.bootstrap(random_images, n_images, resamples=resamples, seed=seed),
        baseline_name="random images",
        details=details,
    )


class _Scorer:
    """Per-latent MS under image weights, from each latent's candidate images and their cosine matrix.

    With slot counts c_t and weights u_t over a latent's candidates, a_t = c_t u_t and G their cosine
    matrix, the weighted sum over pairs of distinct images is (a^T G a - sum_t a_t^2 G_tt) / 2 and the
    pair weight ((sum a)^2 - sum a_t^2) / 2: one [T, T] form per latent and resample.
    """

    def __init__(self, codes_NL: np.ndarray, emb_NE: torch.Tensor, k: int):
        self.codes_NL, self.emb_NE, self.k = codes_NL, emb_NE, k
        n_images, n_latents = codes_NL.shape
        t = min(n_images, CANDIDATES * k)
        self.top_LT = _ranked(-codes_NL, t)
        self.bottom_LT = _ranked(codes_NL, t)
        self.top_act_LT = np.take_along_axis(codes_NL.T, self.top_LT, axis=1)
        self.bottom_act_LT = np.take_along_axis(codes_NL.T, self.bottom_LT, axis=1)
        self.gram_LTT = np.zeros((n_latents, t, t))
        for start in range(0, n_latents, GRAM_LATENTS):
            e_LTE = emb_NE[torch.from_numpy(self.top_LT[start : start + GRAM_LATENTS])]
            self.gram_LTT[start : start + GRAM_LATENTS] = (
                torch.bmm(e_LTE, e_LTE.transpose(1, 2)).double().numpy()
            )
        self.diag_LT = np.diagonal(self.gram_LTT, axis1=1, axis2=2)

    def statistic(self, w_N: np.ndarray) -> float:
        scores = self.scores(w_N)
        scores = scores[np.isfinite(scores)]
        return float(scores.mean()) if len(scores) else math.nan

    def scores(self, w_N: np.ndarray) -> np.ndarray:
        """MS of each latent (NaN where undefined) when image i is drawn w_N[i] times."""
        n_latents = self.codes_NL.shape[1]
        if n_latents == 0 or self.k < 2:
            return np.full(n_latents, np.nan)
        w_top, w_bottom = w_N[self.top_LT], w_N[self.bottom_LT]
        before = np.cumsum(w_top, axis=1) - w_top
        c_LT = np.clip(np.minimum(w_top, self.k - before), 0, None)
        short = c_LT.sum(axis=1) < self.k
        # Range over the drawn images: the first drawn candidate from each end.
        hi = self.top_act_LT[np.arange(n_latents), np.argmax(w_top > 0, axis=1)]
        lo = self.bottom_act_LT[np.arange(n_latents), np.argmax(w_bottom > 0, axis=1)]
        lo_short = ~(w_bottom > 0).any(axis=1)
        if lo_short.any():
            lo[lo_short] = self.codes_NL[w_N > 0][:, lo_short].min(axis=0)
        span = hi - lo
        span[span == 0] = 1.0
        u_LT = (self.top_act_LT - lo[:, None]) / span[:, None]
        a_LT = c_LT * u_LT
        # Candidates past the last filled slot of every latent carry no weight.
        used = int(np.flatnonzero(c_LT.any(axis=0)).max(initial=-1)) + 1
        a_LT, g_LTT = a_LT[:, :used], self.gram_LTT[:, :used, :used]
        numer = (np.matmul(g_LTT, a_LT[:, :, None])[:, :, 0] * a_LT).sum(1) - (
            a_LT * a_LT * self.diag_LT[:, :used]
        ).sum(1)
        denom = _pair_weight(a_LT)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(denom > 0, numer / denom, np.nan)
        for latent in np.flatnonzero(short):
            out[latent] = self._full(w_N, int(latent), float(lo[latent]), float(span[latent]))
        return out

    def _full(self, w_N: np.ndarray, latent: int, lo: float, span: float) -> float:
        """MS of one latent from all images, for resamples that left out most of its candidates."""
        col = self.codes_NL[:, latent]
        order = np.argsort(-col, kind="stable")
        w = w_N[order]
        c = np.clip(np.minimum(w, self.k - (np.cumsum(w) - w)), 0, None)
        keep = c > 0
        idx, c = order[keep], c[keep]
        u = (col[idx] - lo) / span
        gram = (self.emb_NE[torch.from_numpy(idx)] @ self.emb_NE[torch.from_numpy(idx)].T).double().numpy()
        a = c * u
        numer = a @ gram @ a - (a * a * np.diagonal(gram)).sum()
        denom = float(_pair_weight(a[None])[0])
        return float(numer / denom) if denom > 0 else math.nan


def _pair_weight(a_LT: np.ndarray) -> np.ndarray:
    """sum_{t != t'} a_t a_t' as sum_t a_t (A - a_t): exactly 0 when one image carries all the weight,
    as in visaebench's upper triangle, where A^2 - sum a_t^2 could leave rounding noise."""
    total = a_LT.sum(axis=1, keepdims=True)
    return (a_LT * np.clip(total - a_LT, 0, None)).sum(axis=1)


def _ranked(values_NL: np.ndarray, t: int) -> np.ndarray:
    """[L, t] indices of each column's t smallest values, in increasing order."""
    values_LN = values_NL.T
    if t == 0:
        return np.zeros((values_LN.shape[0], 0), np.int64)
    part_LT = np.argpartition(values_LN, t - 1, axis=1)[:, :t] if t < values_LN.shape[1] else None
    if part_LT is None:
        return np.argsort(values_LN, axis=1, kind="stable")
    order = np.argsort(np.take_along_axis(values_LN, part_LT, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part_LT, order, axis=1)

"""Sparsity: active latents per token, and the shares of dead and dense latents, with intervals over images.

Dead and dense are `saev.nn.evaluation.dead_and_dense`, the one definition saev uses everywhere,
applied to each latent's firing frequency over the (weighted) images' tokens.
"""

from collections.abc import Callable

import numpy as np
import torch

from saev.bench import stats
from saev.nn.evaluation import DEAD_DEFINITION, DENSE_DEFINITION, dead_and_dense

_CHUNK = 2048
"""Latents per matrix product: a float64 copy of all of fires_NS (N=3000, S=16384) would be 393 MB."""


class _FiringSums:
    """Per latent, the weighted count of tokens it fires on, for the sample and every bootstrap draw.

    A single weighted sum w_N @ fires_NS reads the whole matrix (0.2-0.4 GB at N=3000, S=16384), so
    doing it per draw and per metric is seconds; instead the draws `stats.bootstrap` will make
    (`stats.weights` with the same seed) are summed in one matrix product up front and looked up by
    their content. A weighting not found is summed directly, so the lookup only saves time.
    """

    def __init__(self, fires_NS: np.ndarray, tokens_N: np.ndarray, resamples: int, seed: int):
        self.fires_NS, self.tokens_N = fires_NS, tokens_N
        w_RN = np.concatenate([np.ones((1, len(tokens_N))), stats.weights(len(tokens_N), resamples, seed)])
        fires_RS = self._sums(w_RN)
        self._found = {w.tobytes(): (row, float(w @ tokens_N)) for w, row in zip(w_RN, fires_RS, strict=True)}

    def _sums(self, w_RN: np.ndarray) -> np.ndarray:
        out = np.empty((len(w_RN), self.fires_NS.shape[1]))
        # float64 sums of integer counts are exact (up to 2^53), so dead (== 0) is exact.
        for start in range(0, self.fires_NS.shape[1], _CHUNK):
            out[:, start : start + _CHUNK] = w_RN @ self.fires_NS[:, start : start + _CHUNK].astype(
                np.float64
            )
        return out

    def __call__(self, w_N: np.ndarray) -> tuple[np.ndarray, float]:
        """Weighted firing counts per latent, and the weighted number of tokens."""
        found = self._found.get(w_N.tobytes())
        if found is not None:
            return found
        return self._sums(w_N[None])[0], float(w_N @ self.tokens_N)


def sparsity(
    fires_NS: np.ndarray, tokens_N: np.ndarray, *, resamples: int = stats.RESAMPLES, seed: int = 0
) -> list[stats.Metric]:
    """`l0` (mean latents firing per token), `dead` and `dense` (shares of latents).

    `fires_NS[i, s]`: on how many of image i's `tokens_N[i]` tokens latent s fires (code > 0).
    A resample holds ~63% of the distinct images, so latents firing on few images look dead more
    often: the dead share's interval sits above its value when such latents exist.
    """
    fires_NS, tokens_N = np.asarray(fires_NS), np.asarray(tokens_N, dtype=np.float64)
    if fires_NS.ndim != 2 or tokens_N.shape != fires_NS.shape[:1]:
        raise ValueError(
            f"fires_NS is [images, latents] and tokens_N [images]; got {fires_NS.shape}, {tokens_N.shape}."
        )
    if fires_NS.size and (fires_NS.min() < 0 or (fires_NS.max(1) > tokens_N).any()):
        raise ValueError("fires_NS counts tokens: each is between 0 and the image's token count.")
    n, n_latents = fires_NS.shape
    sums = _FiringSums(fires_NS, tokens_N, resamples, seed)

    def l0(w_N: np.ndarray) -> float:
        fires_S, tokens = sums(w_N)
        return float(fires_S.sum()) / tokens if tokens > 0 else np.nan

    def share(which: int) -> Callable[[np.ndarray], float]:
        def statistic(w_N: np.ndarray) -> float:
            fires_S, tokens = sums(w_N)
            if tokens <= 0 or not n_latents:
                return np.nan
            return float(dead_and_dense(torch.from_numpy(fires_S / tokens))[which].double().mean())

        return statistic

    def estimate(statistic: Callable[[np.ndarray], float]) -> stats.Estimate:
        return stats.bootstrap(statistic, n, resamples=resamples, seed=seed)

    fires_S, tokens = sums(np.ones(n))
    dead_S, dense_S = dead_and_dense(torch.from_numpy(fires_S / max(tokens, 1.0)))
    common = {"latents": n_latents, "tokens": int(tokens)}
    return [
        stats.Metric(
            "l0",
            "sparsity",
            estimate(l0),
            None,
            details=common | {"definition": "latents firing (> 0) per token"},
        ),
        stats.Metric(
            "dead",
            "sparsity",
            estimate(share(0)),
            False,
            details=common
            | {"definition": f"share of latents; {DEAD_DEFINITION}", "count": int(dead_S.sum())},
        ),
        stats.Metric(
            "dense",
            "sparsity",
            estimate(share(1)),
            False,
            details=common
            | {"definition": f"share of latents; {DENSE_DEFINITION}", "count": int(dense_S.sum())},
        ),
    ]

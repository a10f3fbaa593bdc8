"""Reconstruction: the fraction of variance the SAE leaves unexplained, with a bootstrap over images.

Each image contributes sums over its patch tokens (`TokenSums`); the FVU of any weighting of the
images is a ratio of weighted sums, so the interval costs one matrix-vector product per resample.
"""

import dataclasses
import math
from collections.abc import Iterable

import numpy as np
from jaxtyping import Float
from torch import Tensor

from saev.bench import stats

DEFINITION = (
    "FVU = sum of squared reconstruction errors / sum of squared deviations of the tokens from their "
    "per-dimension mean (1 - FVE of saev evaluate), in the SAE's normalised space"
)
_RELATIVE_FLOOR = 1e-12
"""A total variance below this share of sum(x^2) is rounding error of the two sums (constant tokens)."""


@dataclasses.dataclass(frozen=True)
class TokenSums:
    """Per-image sums over the image's patch tokens, in the SAE's normalised space (float64)."""

    sse_N: np.ndarray
    """Squared reconstruction error, summed over tokens and dimensions."""
    sum_sq_N: np.ndarray
    """Sum of x^2 over tokens and dimensions."""
    sum_x_ND: np.ndarray
    """Sum of x over tokens, per dimension."""
    tokens_N: np.ndarray
    """Tokens counted."""

    def __len__(self) -> int:
        return len(self.sse_N)

    def subset(self, keep_N: np.ndarray) -> "TokenSums":
        """The sums of the images where `keep_N` is true (e.g. those the SAE never trained on)."""
        return TokenSums(*(getattr(self, f.name)[keep_N] for f in dataclasses.fields(self)))

    @classmethod
    def concat(cls, parts: Iterable["TokenSums"]) -> "TokenSums":
        parts = list(parts)
        if not parts:
            return cls(np.zeros(0), np.zeros(0), np.zeros((0, 0)), np.zeros(0))
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))


def token_sums(
    x_BPD: Float[Tensor, "batch patches d_vit"], x_hat_BPD: Float[Tensor, "batch patches d_vit"]
) -> TokenSums:
    """Sums of a batch of images' tokens `x` (normalised) and their reconstructions."""
    x, x_hat = x_BPD.detach().double(), x_hat_BPD.detach().double()
    b, p, _ = x.shape
    return TokenSums(
        sse_N=(x_hat - x).pow(2).sum((1, 2)).cpu().numpy(),
        sum_sq_N=x.pow(2).sum((1, 2)).cpu().numpy(),
        sum_x_ND=x.sum(1).cpu().numpy(),
        tokens_N=np.full(b, float(p)),
    )


def fvu(sums: TokenSums, *, resamples: int = stats.RESAMPLES, seed: int = 0) -> stats.Metric:
    """Fraction of variance unexplained, SSE / sum ||x - mean||^2 with the per-dimension mean:
    saev's definition, 1 - FVE of `saev.nn.evaluation`. 0 is perfect; 1 is what reconstructing every
    token as the mean token scores. None when the tokens have no variance.

    visaebench's M2 (`visaebench_fvu`) differs in both terms. Its "variance" of a set of vectors v is
    E||v||^2 - (E[sum_d v_d])^2: one scalar mean, of the per-token sum of coordinates, stands in for
    the per-dimension mean. So per-dimension offsets whose signs cancel count as variance (and as
    variance explained once reconstructed), while a common offset can make the denominator small or
    negative (then they report inf). Their residual "variance" subtracts the same kind of mean, so
    an error common to all dimensions lowers their FVU, even below 0 (x = [[1, -1], [3, 1]],
    x_hat = x - 1 scores -1 there; saev's FVU is 1).
    """
    sse_N, sum_sq_N, sum_x_ND, tokens_N = sums.sse_N, sums.sum_sq_N, sums.sum_x_ND, sums.tokens_N

    def statistic(w_N: np.ndarray) -> float:
        n = float(w_N @ tokens_N)
        sum_sq = float(w_N @ sum_sq_N)
        sst = sum_sq - float(np.square(w_N @ sum_x_ND).sum()) / n if n > 0 else 0.0
        if n <= 0 or sst <= _RELATIVE_FLOOR * sum_sq:
            return math.nan
        return float(w_N @ sse_N) / sst

    estimate = stats.bootstrap(statistic, len(sums), resamples=resamples, seed=seed)
    n_tokens = float(tokens_N.sum())
    d = sum_x_ND.shape[1] if sum_x_ND.ndim == 2 else 0
    details = {
        "definition": DEFINITION,
        "tokens": int(n_tokens),
        "fve": None if estimate.value is None else 1 - estimate.value,
        "mse": stats.finite(float(sse_N.sum()) / (n_tokens * d)) if n_tokens and d else None,
    }
    return stats.Metric("fvu", "reconstruction", estimate, False, details=details)


def visaebench_fvu(x_ND: Float[Tensor, "n d"], x_hat_ND: Float[Tensor, "n d"]) -> float:
    """visaebench's M2 FVU (`visaebench.metrics.reconstruction.fvu.FVU`) exactly, in float64:
    Var(x - x_hat) / Var(x), each Var being sum(v^2)/n - (sum(v)/n)^2 with sums over all tokens and
    dimensions and n the number of tokens; inf when Var(x) <= 0, as theirs. Kept to compare with
    published numbers."""
    x, res = x_ND.detach().double(), (x_ND - x_hat_ND).detach().double()
    n = x.shape[0]
    var_x = float(x.pow(2).sum()) / n - (float(x.sum()) / n) ** 2
    var_res = float(res.pow(2).sum()) / n - (float(res.sum()) / n) ** 2
    return var_res / var_x if var_x > 0 else math.inf

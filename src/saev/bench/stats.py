"""Confidence intervals by bootstrap over images, and the result every scorecard metric returns.

A metric is written as a statistic of per-image weights: `statistic(w_N)` where `w_N[i]` counts
how often image i is drawn. All ones is the sample itself; a bootstrap resample is a multinomial
draw of N images. Sums over images become weighted sums, so one function gives both the value and
its interval, and nothing is recomputed from scratch per resample unless the metric needs it.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from saev.bench.settings import RESAMPLES

LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A value with its bootstrap interval and how many units (images, unless `unit` says) it rests on."""

    value: float | None
    """None where the metric is undefined on these inputs (null in JSON, never NaN)."""
    low: float | None
    high: float | None
    n: int
    unit: str = "images"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def text(self, spec: str = ".3f") -> str:
        if self.value is None:
            return "-"
        if self.low is None or self.high is None:
            return format(self.value, spec)
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


@dataclasses.dataclass(frozen=True)
class Metric:
    """One row of the scorecard."""

    name: str
    """Short key, e.g. `fvu`, `morans_i`, `probe_k5`."""
    group: str
    """The issue's numbered family: reconstruction, sparsity, spatial, probing, detection,
    monosemanticity, absorption, steering, stability."""
    estimate: Estimate
    higher_is_better: bool | None
    """None for descriptive numbers (e.g. L0) that are neither better high nor low."""
    baseline: Estimate | None = None
    """What the value should beat (a shuffled grid, a dense probe, a random latent)."""
    baseline_name: str = ""
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "higher_is_better": self.higher_is_better,
            **self.estimate.to_json(),
            "baseline": None
            if self.baseline is None
            else self.baseline.to_json() | {"name": self.baseline_name},
            "details": self.details,
        }


def finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def weights(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """[resamples, n] multinomial counts: each row draws n of the n units with replacement."""
    rng = np.random.default_rng(seed)
    return (
        rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
        if n
        else np.zeros((resamples, 0))
    )


def bootstrap(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    unit: str = "images",
) -> Estimate:
    """`statistic` at all-ones weights, with the percentile interval over `resamples` draws,
    recentred by the bootstrap's bias (mean of the draws minus the value).

    Recentring matters for statistics that resampling itself moves: a resample holds ~63% of the
    distinct images, so e.g. the share of latents firing on none of them is higher in every draw,
    and the raw percentile interval would not even contain the value. For unbiased statistics the
    shift is ~0. Resamples where the statistic is undefined (not finite) are left out; if the value
    itself is undefined the estimate is None throughout.
    """
    if n == 0:
        return Estimate(None, None, None, 0, unit)
    value = finite(statistic(np.ones(n)))
    if value is None:
        return Estimate(None, None, None, n, unit)
    draws = np.array([statistic(w) for w in weights(n, resamples, seed)], dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if len(draws) < 2:
        return Estimate(value, None, None, n, unit)
    tail = (1 - level) / 2 * 100
    bias = float(draws.mean()) - value
    low, high = np.percentile(draws, [tail, 100 - tail]) - bias
    # The shift must not leave the values the statistic can take (a share below 0).
    low = max(low, min(draws.min(), value))
    high = min(high, max(draws.max(), value))
    return Estimate(value, float(low), float(high), n, unit)


def weighted_mean(values_N: np.ndarray) -> Callable[[np.ndarray], float]:
    """The statistic "mean over units" of per-unit values."""

    def statistic(w_N: np.ndarray) -> float:
        total = w_N.sum()
        return float(w_N @ values_N / total) if total else math.nan

    return statistic

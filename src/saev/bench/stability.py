"""Stability across seeds: do SAEs of one configuration, trained with different seeds, learn the same
dictionary? Each pair's decoder rows are matched one-to-one (Hungarian, on cosine similarity); the
interval is a bootstrap over latents.
"""

import itertools
import logging
from collections.abc import Callable, Sequence

import numpy as np
import scipy.optimize
import torch
from jaxtyping import Float
from torch import Tensor

from saev.bench import stats

logger = logging.getLogger("saev.bench")

HUNGARIAN_MAX = 4096
"""Above this many latents the O(n^3) assignment takes minutes per pair; each latent's best match is used."""
_ROWS = 1024
"""Rows of the cosine matrix computed at once by the best-match fallback (16384 x 16384 would be 2 GB)."""


def stability(
    decoders: Sequence[Float[Tensor, "d_sae d_vit"]],
    *,
    threshold: float = 0.9,
    resamples: int = stats.RESAMPLES,
    seed: int = 0,
) -> list[stats.Metric]:
    """`stability_cosine` (mean matched cosine over latents and pairs) and `stability_matched` (share of
    latents whose match is above `threshold`), for decoders [d_sae, d_vit] of SAEs differing only in
    seed. Resampled units are the first SAE's latents of each pair. A zero decoder row (a latent that
    was never used) has cosine 0 with everything: it counts as unmatched. Baseline: two Gaussian
    random dictionaries of the same shape.
    """
    if len(decoders) < 2:
        empty = stats.Estimate(None, None, None, 0, "latents")
        details = {"reason": "stability needs at least two SAEs", "seeds": len(decoders)}
        return [
            stats.Metric(name, "stability", empty, True, details=details)
            for name in ("stability_cosine", "stability_matched")
        ]
    shapes = {tuple(d.shape) for d in decoders}
    if len(shapes) > 1:
        raise ValueError(f"decoders of one configuration have one shape; got {sorted(shapes)}.")
    n_latents, d_vit = decoders[0].shape
    one_to_one = n_latents <= HUNGARIAN_MAX
    if one_to_one:
        matching = "Hungarian (one-to-one, maximising total cosine)"
    else:
        matching = (
            f"best match per latent (not one-to-one, so at least Hungarian's): Hungarian is O(n^3), too "
            f"slow above {HUNGARIAN_MAX} latents"
        )
        logger.warning(
            "stability: %d latents; matching each latent to its best match. %s", n_latents, matching
        )
    units = [_unit_rows(d) for d in decoders]
    pairs = list(itertools.combinations(range(len(units)), 2))
    matched_PS = np.stack([_matched(units[a], units[b], one_to_one) for a, b in pairs])
    gen = torch.Generator().manual_seed(seed)
    random_a, random_b = (_unit_rows(torch.randn(n_latents, d_vit, generator=gen)) for _ in range(2))
    base_PS = _matched(random_a, random_b, one_to_one)[None]

    def estimate(statistic: Callable[[np.ndarray], float]) -> stats.Estimate:
        return stats.bootstrap(statistic, n_latents, resamples=resamples, seed=seed, unit="latents")

    def mean_cosine(m_PS: np.ndarray) -> Callable[[np.ndarray], float]:
        return lambda w_S: float((m_PS @ w_S).mean() / w_S.sum())

    def share_matched(m_PS: np.ndarray) -> Callable[[np.ndarray], float]:
        above_PS = (m_PS > threshold).astype(np.float64)
        return lambda w_S: float((above_PS @ w_S).mean() / w_S.sum())

    details = {
        "seeds": len(decoders),
        "pairs": len(pairs),
        "matching": matching,
        "threshold": threshold,
        "per_pair_cosine": [float(m.mean()) for m in matched_PS],
        "definition": "cosine of unit decoder rows, each latent of one SAE matched to a latent of the other",
    }
    return [
        stats.Metric(
            "stability_cosine",
            "stability",
            estimate(mean_cosine(matched_PS)),
            True,
            estimate(mean_cosine(base_PS)),
            "random dictionaries",
            details,
        ),
        stats.Metric(
            "stability_matched",
            "stability",
            estimate(share_matched(matched_PS)),
            True,
            estimate(share_matched(base_PS)),
            "random dictionaries",
            details,
        ),
    ]


def _unit_rows(w_SD: Tensor) -> Tensor:
    """Rows scaled to unit norm in float64 on the CPU; zero rows stay zero (cosine 0, not NaN)."""
    w = w_SD.detach().to("cpu", torch.float64)
    norm = w.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, w / norm.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def _matched(a_SD: Tensor, b_SD: Tensor, one_to_one: bool) -> np.ndarray:
    """[S] cosine between each row of `a` and its match among the rows of `b`."""
    if one_to_one:
        cos_SS = (a_SD @ b_SD.T).numpy()
        rows, cols = scipy.optimize.linear_sum_assignment(cos_SS, maximize=True)
        out = np.zeros(len(a_SD))
        out[rows] = cos_SS[rows, cols]
        return out
    return np.concatenate(
        [(a_SD[i : i + _ROWS] @ b_SD.T).amax(1).numpy() for i in range(0, len(a_SD), _ROWS)]
    )

"""The reference activation normalisation, in one place for the store readers, the trainer and the SAE.

The public SAEs were trained on `(clamp(x, -clamp, clamp) - mean) / scale`, where `mean` is the
dataset's mean activation and `scale` makes the average L2 norm sqrt(d_vit). `normalize` is the only
implementation of that formula; everything that normalises calls it.
"""

import dataclasses
import math

import torch
from jaxtyping import Float
from torch import Tensor

DEFAULT_CLAMP = 1e5
"""The reference clamps activations to [-1e5, 1e5] before normalising them."""


@dataclasses.dataclass(frozen=True)
class ActNorm:
    """Reference activation normalisation: `x' = (clamp(x, -clamp, clamp) - mean) / scale`."""

    mean: Float[Tensor, " d_vit"]
    """Mean activation."""
    scale: float
    """Mean L2 distance to `mean`, divided by sqrt(d_vit)."""
    clamp: float = DEFAULT_CLAMP

    def to(self, device: str | torch.device) -> "ActNorm":
        return dataclasses.replace(self, mean=self.mean.to(device))

    def apply(
        self, x: Float[Tensor, "*batch d_vit"], *, inplace: bool = False
    ) -> Float[Tensor, "*batch d_vit"]:
        return normalize(x, self.mean, self.scale, self.clamp, inplace=inplace)


def normalize(
    x: Float[Tensor, "*batch d_vit"],
    mean: Float[Tensor, " d_vit"],
    scale: float | Float[Tensor, ""],
    clamp: float,
    *,
    inplace: bool = False,
) -> Float[Tensor, "*batch d_vit"]:
    """`(clamp(x, -clamp, clamp) - mean) / scale` in x's dtype; `inplace` overwrites x (a fresh buffer)."""
    if inplace:
        return x.clamp_(-clamp, clamp).sub_(mean).div_(scale)
    return (x.clamp(-clamp, clamp) - mean) / scale


def denormalize(
    x: Float[Tensor, "*batch d_vit"], mean: Float[Tensor, " d_vit"], scale: float | Float[Tensor, ""]
) -> Float[Tensor, "*batch d_vit"]:
    """Inverse of `normalize` (inside the clamp range)."""
    return x * scale + mean


def estimate_normalization(acts_ND: Float[Tensor, "n d_vit"], clamp: float = DEFAULT_CLAMP) -> ActNorm:
    """The reference formula: mean activation, and mean distance to it over sqrt(d_vit).

    Give it a sample of the activations the SAE will see (the reference uses 2**19 tokens chosen
    by `numpy.random.default_rng(42).permutation`; see `saev.data.statistics`). Accumulates in
    float64 so the estimate does not drift with sample size.
    """
    if acts_ND.ndim != 2 or len(acts_ND) == 0:
        raise ValueError(f"expected a non-empty [n, d_vit] tensor, got shape {tuple(acts_ND.shape)}.")
    x = acts_ND.to(torch.float64).clamp(-clamp, clamp)
    mean = x.mean(dim=0)
    # The clamp tames infinities, but one NaN makes every statistic NaN (and the mean shows it).
    if not torch.isfinite(mean).all():
        row = int(torch.isnan(x).any(dim=1).nonzero()[0])
        raise ValueError(f"activation row {row} (of {len(x)}) holds NaN; statistics need finite values.")
    scale = (x - mean).norm(dim=1).mean() / math.sqrt(x.shape[1])
    return ActNorm(mean.to(torch.float32), float(scale), clamp)

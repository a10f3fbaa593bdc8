"""Which latents fire most on one image, by their strongest patch."""

import dataclasses

import torch
from jaxtyping import Float
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class LatentSummary:
    latent: int
    max: float
    sum: float
    active_patches: list[int]


def summarize(codes_PS: Float[Tensor, "patches d_sae"], top: int) -> list[LatentSummary]:
    """The `top` latents with the largest single-patch activation (ties: lower index), firing ones only."""
    max_S = codes_PS.max(dim=0).values
    n = min(top, int((max_S > 0).sum()))
    order = torch.sort(max_S, descending=True, stable=True).indices[:n].tolist()
    return [
        LatentSummary(
            latent=s,
            max=float(max_S[s]),
            sum=float(codes_PS[:, s].sum()),
            active_patches=torch.nonzero(codes_PS[:, s] > 0).flatten().tolist(),
        )
        for s in order
    ]

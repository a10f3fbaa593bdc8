"""Latents related to a latent: the nearest by decoder direction, and those firing on the same tokens.

Both are computed for the rendered latents only, a block of them at a time against all d_sae
latents, so memory is block x d_sae whatever the SAE's width (never d_sae x d_sae)."""

import dataclasses

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from saev.visuals.topk import CodeSample

RELATED = 5
"""Related latents listed per latent."""
BLOCK = 256
"""Rendered latents compared with every latent at once."""


@dataclasses.dataclass(frozen=True)
class Related:
    """For each of `latents`, its RELATED most related other latents (-1 where there are fewer)."""

    latents: list[int]
    others_RK: Int[Tensor, "rendered k"]
    values_RK: Float[Tensor, "rendered k"]

    def of(self, latent: int) -> list[tuple[int, float]]:
        r = self.latents.index(latent)
        return [
            (o, v)
            for o, v in zip(self.others_RK[r].tolist(), self.values_RK[r].tolist(), strict=True)
            if o >= 0
        ]


def _top_others(
    scores_RS: Float[Tensor, "rendered d_sae"], latents_R: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """Each row's k highest scores (ties: lower latent) leaving out the row's own latent and
    latents scored -inf."""
    scores_RS = scores_RS.clone()
    scores_RS[torch.arange(len(latents_R)), latents_R] = float("-inf")
    order = torch.sort(scores_RS, dim=1, descending=True, stable=True).indices[:, :k]
    values = scores_RS.gather(1, order)
    kept = torch.isfinite(values)
    return torch.where(kept, order, -1), torch.where(kept, values, 0.0)


def _blockwise(latents: list[int], k: int, scores) -> Related:
    out_o, out_v = [], []
    for start in range(0, len(latents), BLOCK):
        block_R = torch.tensor(latents[start : start + BLOCK], dtype=torch.int64)
        others, values = _top_others(scores(block_R), block_R, k)
        out_o.append(others)
        out_v.append(values)
    if not out_o:
        return Related([], torch.zeros(0, k, dtype=torch.int64), torch.zeros(0, k))
    return Related(list(latents), torch.cat(out_o), torch.cat(out_v))


def neighbours(W_dec_SD: Float[Tensor, "d_sae d_vit"], latents: list[int], k: int = RELATED) -> Related:
    """The k latents whose decoder directions have the highest cosine with each of `latents`'."""
    unit_SD = W_dec_SD.detach().float().cpu()
    unit_SD = unit_SD / unit_SD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return _blockwise(latents, k, lambda block_R: unit_SD[block_R] @ unit_SD.T)


def cooccurrence(sample: CodeSample, d_sae: int, latents: list[int], k: int = RELATED) -> Related:
    """The k latents most often firing on the tokens where each of `latents` fires, with
    P(other fires | this fires) over `sample`'s tokens (latents that never fire there list none)."""
    import scipy.sparse  # 0.3 s to import: only the gallery pays for it

    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), sample.counts_N.long().cumsum(0)]).numpy()
    latent_A = sample.latents_A.numpy()
    codes_NS = scipy.sparse.csr_matrix(
        (np.ones(len(latent_A), dtype=np.int32), latent_A, indptr), shape=(sample.n_tokens, d_sae)
    )
    codes_SN = codes_NS.T.tocsr()

    def conditional(block_R: Tensor) -> Tensor:
        counts_RS = torch.from_numpy((codes_SN[block_R.numpy()] @ codes_NS).toarray()).double()
        own_R = counts_RS.gather(1, block_R[:, None])
        # Zero co-counts are not listed: "never together" is no relation.
        return torch.where(counts_RS > 0, counts_RS / own_R.clamp_min(1), float("-inf")).float()

    return _blockwise(latents, k, conditional)

"""TopK (Gao et al. 2024): every token keeps its k largest pre-activations."""

import dataclasses
import typing

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from saev.nn import sparse
from saev.nn.architectures.base import Architecture, Autoencoder, KOption, check_k, topk_per_token


@dataclasses.dataclass(frozen=True)
class TopK:
    """Keep the k largest pre-activations of every token; the rest are zero."""

    k: int = 32
    """Number of latents active per token."""
    relu: bool = True
    """Zero negative values among the top k (False reproduces reference V2 TopK checkpoints)."""


class TopKActivation(torch.nn.Module):
    """Per-token top-k. `relu=False` reproduces the reference V2 TopK, whose codes can be negative."""

    def __init__(self, k: int, relu: bool = True):
        super().__init__()
        self.k = k
        self.relu = relu

    def forward(self, pre_BS: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        vals_BK, idx_BK = pre_BS.topk(self.k, dim=-1, sorted=False)
        if self.relu:
            vals_BK = F.relu(vals_BK)
        return torch.zeros_like(pre_BS).scatter_(-1, idx_BK, vals_BK)


class TopKArchitecture(Architecture):
    name = "topk"
    config = TopK
    options = KOption
    auxk = True

    def build(self, opts: KOption) -> TopK:
        return TopK(k=opts.k)

    def module(self, act_cfg: TopK, d_sae: int) -> torch.nn.Module:
        return TopKActivation(act_cfg.k, relu=act_cfg.relu)

    def tag(self, opts: KOption) -> str:
        return f"k{opts.k}"

    def check(self, opts: KOption, d_sae: int) -> None:
        check_k(opts.k, d_sae)

    def sparse_k(self, act_cfg: TopK) -> int | None:
        # Sign-keeping codes (reference V2) would need negative values on the sparse path.
        return act_cfg.k if act_cfg.relu else None

    def select(
        self, sae: Autoencoder, pre_BS: Float[Tensor, "batch d_sae"], per_token: bool
    ) -> sparse.Active:
        return topk_per_token(pre_BS, typing.cast(TopKActivation, sae.activation).k)


ARCHITECTURE = TopKArchitecture()

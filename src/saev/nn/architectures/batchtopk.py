"""BatchTopK (Bussmann et al. 2024): the batch's n_tokens * k largest pre-activations during
training, a learned threshold at inference."""

import dataclasses
import typing

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from saev import distributed
from saev.errors import ConfigError
from saev.nn import sparse
from saev.nn.architectures.base import Architecture, Autoencoder, KOption, check_k, topk_per_token


@dataclasses.dataclass(frozen=True)
class BatchTopK:
    """Keep the batch_size * k largest pre-activations of a training batch.

    During training a threshold is learned (a running estimate of the smallest kept value);
    at inference codes are `pre * (pre > threshold)`, so they do not depend on the batch.
    """

    k: int = 32
    """Average number of latents active per token."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchTopKOptions(KOption):
    topk_warmup: float = 0.75
    """batchtopk: fraction of training that picks the top k per token (as TopK) before per-batch selection and its threshold are learned; TopK finds features much sooner (see BENCHMARKS.md)."""


class BatchTopKActivation(torch.nn.Module):
    """Top (n_tokens * k) over a whole training batch; a learned threshold at inference.

    The threshold is a running mean of the smallest value kept in each training batch,
    so inference codes depend only on the token itself. Its momentum is high because the
    pre-activations keep shrinking while the learning rate is high: at 0.01 (a lag of 100 steps) a
    1M-token run kept a threshold 30% above its last batches' (held-out L0 0.7 for k = 4). The
    smallest kept value is a quantile of a whole batch, so it barely varies from batch to batch
    and needs little averaging.
    """

    threshold: Tensor  # a buffer, registered in __init__

    def __init__(self, k: int, momentum: float = 0.3):
        super().__init__()
        self.k = k
        self.momentum = momentum
        self.register_buffer("threshold", torch.tensor(-1.0))
        """Negative until the first training batch sets it."""

    def forward(self, pre_BS: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        pre_BS = F.relu(pre_BS)
        if not self.training:
            if self.threshold < 0:
                raise RuntimeError("BatchTopK threshold was never set: train the SAE before encoding.")
            return pre_BS * (pre_BS > self.threshold)
        idx = self.select(pre_BS)
        flat = pre_BS.reshape(-1)
        return torch.zeros_like(flat).scatter_(0, idx, flat[idx]).reshape(pre_BS.shape)

    @torch.no_grad()
    def select(self, pre_BS: Float[Tensor, "*batch d_sae"]) -> Int[Tensor, " n"]:
        """Flat indices of the n_tokens * k largest positive pre-activations; updates the threshold."""
        flat = pre_BS.reshape(-1)
        world = distributed.current()
        # Under torchrun the batch is every process's slice together: n_keep counts all of them.
        n_keep = self.k * (flat.numel() // pre_BS.shape[-1]) * world.size
        vals, idx = sparse.top_set(flat, min(n_keep, flat.numel()))
        if world.distributed:
            # No process holds more of the batch's top n_keep than its own top n_keep, so the n_keep-th
            # largest of every process's candidates is the batch's threshold.
            kth = torch.cat(distributed.all_gather(vals)).topk(n_keep, sorted=False).values.min()
            kept = vals >= kth
            vals, idx = vals[kept], idx[kept]
        positive = vals > 0
        smallest = vals[positive].min() if positive.any() else torch.tensor(float("inf"), device=vals.device)
        smallest = distributed.all_reduce(smallest.float().reshape(1), "min")[0]
        if torch.isfinite(smallest):
            batch_min = smallest.to(self.threshold.dtype)  # bfloat16 under autocast
            if self.threshold < 0:
                self.threshold.copy_(batch_min)
            else:
                self.threshold.lerp_(batch_min, self.momentum)
        return idx[positive]


class BatchTopKArchitecture(Architecture):
    name = "batchtopk"
    config = BatchTopK
    options = BatchTopKOptions
    auxk = True

    def build(self, opts: BatchTopKOptions) -> BatchTopK:
        return BatchTopK(k=opts.k)

    def module(self, act_cfg: BatchTopK, d_sae: int) -> torch.nn.Module:
        return BatchTopKActivation(act_cfg.k)

    def tag(self, opts: BatchTopKOptions) -> str:
        return f"k{opts.k}"

    def check(self, opts: BatchTopKOptions, d_sae: int) -> None:
        check_k(opts.k, d_sae)
        if not 0 <= opts.topk_warmup < 1:
            raise ConfigError(f"--topk-warmup is a fraction of training in [0, 1), got {opts.topk_warmup}.")

    def sparse_k(self, act_cfg: BatchTopK) -> int | None:
        return act_cfg.k

    def select(
        self, sae: Autoencoder, pre_BS: Float[Tensor, "batch d_sae"], per_token: bool
    ) -> sparse.Active:
        act = typing.cast(BatchTopKActivation, sae.activation)
        if per_token:
            return topk_per_token(pre_BS, act.k)
        flat = act.select(pre_BS)
        n_latents = pre_BS.shape[1]
        return sparse.Active.from_pairs(flat // n_latents, flat % n_latents, pre_BS.shape[0])

    def per_token_warmup(self, opts: BatchTopKOptions) -> float:
        return opts.topk_warmup


ARCHITECTURE = BatchTopKArchitecture()

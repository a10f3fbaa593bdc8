"""Training losses for every architecture: reconstruction (optionally Matryoshka), the architecture's
own penalty terms, and AuxK.

All inputs are activations already in the SAE's normalised space. Architectures that the sparse
path can train (see `Architecture.sparse_k`) take it when it is faster: it gives the same values and
gradients as the dense path while touching only the active (token, latent) pairs after the encoder
matmul (see `saev.nn.sparse`).
"""

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from saev import distributed
from saev.nn import matryoshka, sparse
from saev.nn.modeling import SparseAutoencoder

Decoder = Literal["auto", "dense", "sparse"]
SPARSE_MIN_RATIO = 8
"""`auto` decodes sparsely once d_sae / k reaches this (see BENCHMARKS.md, issue 4)."""


@dataclasses.dataclass(frozen=True)
class Objective:
    """Training-only options of the loss."""

    matryoshka_prefixes: tuple[int, ...] = ()
    """Nested prefix sizes (latent counts); each prefix must reconstruct the input on its own."""
    aux_k: int = 0
    """Dead latents used by the AuxK loss per token (architectures that use it); 0 disables it."""
    aux_coeff: float = 1 / 32
    decoder: Decoder = "auto"


@dataclasses.dataclass(frozen=True)
class StepLoss:
    loss: Tensor
    mse: Tensor
    """Per-element MSE of the full reconstruction."""
    sparsity: Tensor
    aux: Tensor
    l0: Tensor
    l1: Tensor
    fired_S: Bool[Tensor, " d_sae"]
    """Latents active on at least one token of the batch."""


def uses_sparse(sae: SparseAutoencoder, decoder: Decoder) -> bool:
    k = sae.arch.sparse_k(sae.cfg.activation)
    if k is None:
        return False
    if decoder == "auto":
        return sae.cfg.d_sae >= SPARSE_MIN_RATIO * k
    return decoder == "sparse"


def training_loss(
    sae: SparseAutoencoder,
    x_BD: Float[Tensor, "batch d_vit"],
    coeff: float | Tensor,
    dead_S: Bool[Tensor, " d_sae"] | None,
    obj: Objective,
    per_token: bool = False,
) -> StepLoss:
    """Loss of one batch of normalised activations; `coeff` is the (warmed-up) sparsity coefficient.

    `per_token` picks the top k per token for this step (the BatchTopK warm-up).
    """
    x_in = x_BD - sae.b_dec if sae.cfg.subtract_b_dec else x_BD
    sizes = matryoshka.prefixes(obj.matryoshka_prefixes, sae.cfg.d_sae)
    if uses_sparse(sae, obj.decoder):
        return _sparse_loss(sae, x_BD, x_in, sizes, dead_S, obj, per_token)
    return _dense_loss(sae, x_BD, x_in, sizes, coeff, dead_S, obj, per_token)


def _sparse_loss(sae, x_BD, x_in, sizes, dead_S, obj, per_token: bool) -> StepLoss:
    with torch.no_grad():
        pre_BS = torch.addmm(sae.b_enc, x_in, sae.W_enc)
        active = sae.arch.select(sae, pre_BS, per_token)
    codes_N = F.relu(sparse.encode_at(x_in, sae.W_enc, sae.b_enc, pre_BS, active))
    recons = matryoshka.sparse_reconstructions(codes_N, active, sae.W_dec, sae.b_dec, sizes)
    n = x_BD.shape[0]
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=x_BD.device)
    fired[active.latent_i[codes_N > 0]] = True
    l0 = (codes_N > 0).sum().float() / n
    l1 = codes_N.sum() / n
    aux = _auxk(sae, x_BD, x_in, pre_BS, recons[-1], dead_S, obj, differentiable_pre=False)
    return _combine(x_BD, recons, torch.zeros((), device=x_BD.device), aux, l0, l1, fired)


def _dense_loss(sae, x_BD, x_in, sizes, coeff, dead_S, obj, per_token: bool) -> StepLoss:
    pre_BS = F.linear(x_in, sae.W_enc.T, sae.b_enc)
    if per_token:
        vals, idx = pre_BS.topk(sae.cfg.activation.k, dim=-1, sorted=False)
        f_BS = torch.zeros_like(pre_BS).scatter(-1, idx, F.relu(vals))
    else:
        f_BS = sae.arch.encode(sae, pre_BS)
    recons = matryoshka.dense_reconstructions(f_BS, sae.W_dec, sae.b_dec, sizes)
    fires_BS = f_BS > 0  # one pass over the codes serves L0 and the fired latents
    l0 = fires_BS.sum(-1, dtype=torch.float32).mean()
    l1 = f_BS.sum(-1).mean()
    penalty = sae.arch.penalty(sae, x_BD, pre_BS, f_BS, coeff)
    aux = (
        _auxk(sae, x_BD, x_in, pre_BS, recons[-1], dead_S, obj, differentiable_pre=True)
        if sae.arch.auxk
        else penalty.aux
    )
    return _combine(x_BD, recons, penalty.sparsity, aux, l0, l1, fires_BS.any(0))


def _auxk(sae, x_BD, x_in, pre_BS, recon_BD, dead_S, obj, differentiable_pre: bool) -> Tensor:
    """AuxK (Gao et al. 2024): the dead latents' top pre-activations reconstruct the residual."""
    zero = torch.zeros((), device=x_BD.device)
    if obj.aux_k <= 0 or dead_S is None or not sae.arch.auxk:
        return zero
    n_dead = int(dead_S.sum())
    if n_dead == 0:
        return zero
    k_aux = min(obj.aux_k, n_dead)
    masked = pre_BS.masked_fill(~dead_S, float("-inf"))
    if differentiable_pre:
        vals, idx = masked.topk(k_aux, dim=-1, sorted=False)
        active = sparse.Active.from_topk(idx)
        codes = F.relu(vals.reshape(-1))
    else:
        active = sparse.Active.from_topk(masked.topk(k_aux, dim=-1, sorted=False).indices)
        codes = F.relu(sparse.encode_at(x_in, sae.W_enc, sae.b_enc, pre_BS, active))
    residual = x_BD - recon_BD.detach()
    e_hat = sparse.decode(codes, active, sae.W_dec)
    variance = _batch_variance(residual).clamp_min(1e-12)
    # Under torchrun each process holds a slice of the batch and gradients are averaged over them:
    # its share of the error, scaled by their number, averages to the whole batch's term.
    return obj.aux_coeff * distributed.current().size * (e_hat - residual).pow(2).sum() / variance


def _batch_variance(residual_BD: Float[Tensor, "batch d_vit"]) -> Tensor:
    """Total squared deviation of the residuals from their mean, over the whole batch (every process's
    slice under torchrun: two small all-reduces, of the mean and of the deviations)."""
    world = distributed.current()
    if not world.distributed:
        return (residual_BD - residual_BD.mean(0)).pow(2).sum()
    n = torch.tensor([float(len(residual_BD))], device=residual_BD.device)
    sums = distributed.all_reduce(torch.cat([residual_BD.sum(0), n]))
    mean_D = sums[:-1] / sums[-1]
    return distributed.all_reduce((residual_BD - mean_D).pow(2).sum())


def _combine(x_BD, recons, sparsity, aux, l0, l1, fired) -> StepLoss:
    mses = [F.mse_loss(r, x_BD) for r in recons]
    recon = torch.stack(mses).mean() if len(mses) > 1 else mses[0]
    return StepLoss(
        recon + sparsity + aux,
        mses[-1].detach(),
        sparsity.detach(),
        aux.detach(),
        l0.detach(),
        l1.detach(),
        fired,
    )

"""Training losses for every architecture: reconstruction (optionally Matryoshka), sparsity and AuxK.

All inputs are activations already in the SAE's normalised space. The TopK family can take the
sparse path (see `saev.nn.sparse`), which gives the same values and gradients as the dense path
while touching only the active (token, latent) pairs after the encoder matmul.
"""

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from saev.nn import config, sparse
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
    """Dead latents used by the AuxK loss per token (TopK family); 0 disables it."""
    aux_coeff: float = 1 / 32
    decoder: Decoder = "auto"
    jumprelu_bandwidth: float = 1e-3


@dataclasses.dataclass(frozen=True)
class StepLoss:
    loss: Tensor
    mse: Tensor
    """Per-element MSE of the full reconstruction."""
    sparsity: Tensor
    aux: Tensor
    l0: Tensor
    l1: Tensor
    fired_S: Tensor
    """[d_sae] bool: latents active on at least one token of the batch."""


def uses_sparse(sae: SparseAutoencoder, decoder: Decoder) -> bool:
    act = sae.cfg.activation
    if not isinstance(act, config.TopK | config.BatchTopK) or (isinstance(act, config.TopK) and not act.relu):
        return False
    if decoder == "auto":
        return sae.cfg.d_sae >= SPARSE_MIN_RATIO * act.k
    return decoder == "sparse"


def training_loss(
    sae: SparseAutoencoder,
    x_BD: Tensor,
    coeff: float,
    dead_S: Tensor | None,
    obj: Objective,
    per_token: bool = False,
) -> StepLoss:
    """Loss of one batch of normalised activations; `coeff` is the (warmed-up) sparsity coefficient.

    `per_token` makes a BatchTopK SAE pick its top k per token for this step (the TopK warm-up).
    """
    x_in = x_BD - sae.b_dec if sae.cfg.subtract_b_dec else x_BD
    prefixes = _prefixes(obj.matryoshka_prefixes, sae.cfg.d_sae)
    if uses_sparse(sae, obj.decoder):
        return _sparse_loss(sae, x_BD, x_in, prefixes, dead_S, obj, per_token)
    return _dense_loss(sae, x_BD, x_in, prefixes, coeff, dead_S, obj, per_token)


def _prefixes(prefixes: tuple[int, ...], d_sae: int) -> list[int]:
    return [p for p in prefixes if p < d_sae] + [d_sae]


def _sparse_loss(sae, x_BD, x_in, prefixes, dead_S, obj, per_token: bool) -> StepLoss:
    with torch.no_grad():
        pre_BS = torch.addmm(sae.b_enc, x_in, sae.W_enc)
        active = _select(sae, pre_BS, per_token)
    codes_N = F.relu(sparse.encode_at(x_in, sae.W_enc, sae.b_enc, pre_BS, active))
    recons = [
        sparse.decode(codes_N if m == sae.cfg.d_sae else codes_N * (active.latent_i < m), active, sae.W_dec)
        + sae.b_dec
        for m in prefixes
    ]
    n = x_BD.shape[0]
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=x_BD.device)
    fired[active.latent_i[codes_N > 0]] = True
    l0 = (codes_N > 0).sum().float() / n
    l1 = codes_N.sum() / n
    aux = _auxk(sae, x_BD, x_in, pre_BS, recons[-1], dead_S, obj, differentiable_pre=False)
    return _combine(x_BD, recons, torch.zeros((), device=x_BD.device), aux, l0, l1, fired)


def _select(sae: SparseAutoencoder, pre_BS: Tensor, per_token: bool) -> sparse.Active:
    act = sae.cfg.activation
    if isinstance(act, config.TopK) or per_token:
        return sparse.Active.from_topk(pre_BS.topk(act.k, dim=-1, sorted=False).indices)
    flat = sae.activation.select(pre_BS)
    n_latents = pre_BS.shape[1]
    return sparse.Active.from_pairs(flat // n_latents, flat % n_latents, pre_BS.shape[0])


def _dense_loss(sae, x_BD, x_in, prefixes, coeff, dead_S, obj, per_token: bool) -> StepLoss:
    pre_BS = F.linear(x_in, sae.W_enc.T, sae.b_enc)
    if per_token:
        vals, idx = pre_BS.topk(sae.cfg.activation.k, dim=-1, sorted=False)
        f_BS = torch.zeros_like(pre_BS).scatter(-1, idx, F.relu(vals))
    else:
        f_BS = sae.activation(pre_BS)
    recons = _dense_prefix_decode(f_BS, sae, prefixes)
    l0 = (f_BS > 0).sum(-1, dtype=torch.float32).mean()
    l1 = f_BS.sum(-1).mean()
    act = sae.cfg.activation
    if isinstance(act, config.Relu):
        sparsity = coeff * l1
    elif isinstance(act, config.JumpRelu):
        sparsity = coeff * _step(pre_BS, sae.activation.threshold, obj.jumprelu_bandwidth).sum(-1).mean()
    else:
        sparsity = torch.zeros((), device=x_BD.device)
    aux = _auxk(sae, x_BD, x_in, pre_BS, recons[-1], dead_S, obj, differentiable_pre=True)
    return _combine(x_BD, recons, sparsity, aux, l0, l1, (f_BS > 0).any(0))


def _dense_prefix_decode(f_BS: Tensor, sae: SparseAutoencoder, prefixes: list[int]) -> list[Tensor]:
    """Reconstructions from each prefix, built block by block so the total cost is one decode."""
    recons, partial, start = [], sae.b_dec.expand(f_BS.shape[0], -1), 0
    for m in prefixes:
        partial = partial + f_BS[:, start:m] @ sae.W_dec[start:m]
        recons.append(partial)
        start = m
    return recons


def _auxk(sae, x_BD, x_in, pre_BS, recon_BD, dead_S, obj, differentiable_pre: bool) -> Tensor:
    """AuxK (Gao et al. 2024): the dead latents' top pre-activations reconstruct the residual."""
    zero = torch.zeros((), device=x_BD.device)
    if obj.aux_k <= 0 or dead_S is None or not isinstance(sae.cfg.activation, config.TopK | config.BatchTopK):
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
    variance = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
    return obj.aux_coeff * (e_hat - residual).pow(2).sum() / variance


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


class _StepFn(torch.autograd.Function):
    """Heaviside H(pre - theta); its pseudo-gradient reaches theta only (JumpReLU paper, L0 term)."""

    @staticmethod
    def forward(ctx, pre_BS, theta_S, bandwidth):
        ctx.save_for_backward(pre_BS, theta_S)
        ctx.bandwidth = bandwidth
        return (pre_BS > theta_S).to(pre_BS.dtype)

    @staticmethod
    def backward(ctx, grad_BS):
        pre_BS, theta_S = ctx.saved_tensors
        eps = ctx.bandwidth
        near = ((pre_BS - theta_S).abs() < eps / 2).to(pre_BS.dtype)
        grad_theta = (-(1.0 / eps) * near * grad_BS).reshape(-1, theta_S.shape[-1]).sum(0)
        return None, grad_theta, None


def _step(pre_BS: Tensor, theta_S: Tensor, bandwidth: float) -> Tensor:
    return _StepFn.apply(pre_BS, theta_S, bandwidth)

"""Sparse codes for the TopK family: only the active (token, latent) pairs are touched.

A TopK SAE's codes have k nonzeros per token out of d_sae. The encoder still needs one dense
matmul to find them, but everything after it (the decoder, and every gradient) can work on the
N = tokens * k active pairs alone:

- `encode_at` returns pre-activations at chosen pairs, with a backward that accumulates
  W_enc's gradient per latent with `embedding_bag` instead of a dense [d_vit, tokens] x
  [tokens, d_sae] product;
- `decode` sums the active decoder rows per token with `embedding_bag`;
- `top_set` finds a batch's largest values (BatchTopK) from a few candidates, without sorting them all.
"""

import dataclasses

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class Active:
    """Active (token, latent) pairs, grouped by token: token t owns entries offsets[t]:offsets[t+1]."""

    token_i: Int[Tensor, " n"]
    """Non-decreasing."""
    latent_i: Int[Tensor, " n"]
    offsets: Int[Tensor, " n_tokens"]
    """Start of each token's entries."""
    n_tokens: int

    @classmethod
    def from_topk(cls, idx_BK: Int[Tensor, "n_tokens k"]) -> "Active":
        """Exactly k latents per token."""
        n, k = idx_BK.shape
        token_i = torch.arange(n, device=idx_BK.device).repeat_interleave(k)
        return cls(token_i, idx_BK.reshape(-1), torch.arange(0, n * k, k, device=idx_BK.device), n)

    @classmethod
    def from_pairs(cls, token_i: Int[Tensor, " n"], latent_i: Int[Tensor, " n"], n_tokens: int) -> "Active":
        """Any pairs; sorted by token here."""
        order = torch.argsort(token_i * (latent_i.max() + 1 if len(latent_i) else 1) + latent_i)
        token_i, latent_i = token_i[order], latent_i[order]
        counts = torch.bincount(token_i, minlength=n_tokens)
        offsets = torch.cumsum(counts, 0) - counts
        return cls(token_i, latent_i, offsets, n_tokens)


class _EncodeAt(torch.autograd.Function):
    """values[n] = (x @ W_enc + b_enc)[token_i[n], latent_i[n]], given those values precomputed."""

    @staticmethod
    def forward(ctx, x_BD, W_enc_DS, b_enc_S, pre_N, token_i, latent_i, offsets):
        ctx.save_for_backward(x_BD, W_enc_DS, token_i, latent_i, offsets)
        return pre_N.clone()

    @staticmethod
    def backward(ctx, g_N):
        x_BD, W_enc_DS, token_i, latent_i, offsets = ctx.saved_tensors
        n_latents = W_enc_DS.shape[1]
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            order = torch.argsort(latent_i, stable=True)
            counts = torch.bincount(latent_i, minlength=n_latents)
            starts = torch.cumsum(counts, 0) - counts
            if ctx.needs_input_grad[1]:
                # Row s of W_enc^T's gradient is the g-weighted sum of the tokens where latent s is active.
                grad_W = F.embedding_bag(
                    token_i[order], x_BD, starts, mode="sum", per_sample_weights=g_N[order]
                ).T
            if ctx.needs_input_grad[2]:
                grad_b = torch.zeros(n_latents, dtype=g_N.dtype, device=g_N.device).index_add_(
                    0, latent_i, g_N
                )
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(
                latent_i, W_enc_DS.T.contiguous(), offsets, mode="sum", per_sample_weights=g_N
            )
        return grad_x, grad_W, grad_b, None, None, None, None


def encode_at(
    x_BD: Float[Tensor, "batch d_vit"],
    W_enc_DS: Float[Tensor, "d_vit d_sae"],
    b_enc_S: Float[Tensor, " d_sae"],
    pre_BS: Float[Tensor, "batch d_sae"],
    active: Active,
) -> Float[Tensor, " n"]:
    """Pre-activations [N] at the active pairs, differentiable with sparse gradients.

    `pre_BS` is the dense pre-activation matrix computed without gradients (to select the pairs).
    """
    pre_N = pre_BS[active.token_i, active.latent_i].to(x_BD.dtype)  # under autocast pre_BS is bfloat16
    return _EncodeAt.apply(x_BD, W_enc_DS, b_enc_S, pre_N, active.token_i, active.latent_i, active.offsets)


def decode(
    codes_N: Float[Tensor, " n"], active: Active, W_dec_SD: Float[Tensor, "d_sae d_vit"]
) -> Float[Tensor, "n_tokens d_vit"]:
    """Sum of the active decoder rows weighted by their codes, [n_tokens, d_vit] (no bias)."""
    return F.embedding_bag(
        active.latent_i, W_dec_SD, active.offsets, mode="sum", per_sample_weights=codes_N.to(W_dec_SD.dtype)
    )


CANDIDATE_GROUP = 16
"""Values per group in `top_set`: its first pass keeps one value in this many."""


def top_set(flat_N: Float[Tensor, " n"], m: int) -> tuple[Float[Tensor, " m"], Int[Tensor, " m"]]:
    """The m largest values and their indices: the same set as `flat_N.topk(m, sorted=False)`, in
    another order, found among a few candidates instead of all n values (a top m of 50M values took
    most of a BatchTopK step).

    The values form groups of `CANDIDATE_GROUP` (strided, so their maxima take one vectorised pass).
    The (m + 1)-th largest group maximum is at most the (m + 1)-th largest value (m + 1 groups reach
    it), so every value at least that large lies in a group whose maximum reaches it: those values are
    the candidates, usually little more than m of them. Their m largest are torch's set unless the
    m-th and (m + 1)-th tie (then torch's pick among equals decides, so torch picks). float16 and
    bfloat16 values tie too often to gain, NaNs rank first in torch: both go to `topk` itself.
    """
    n, g = flat_N.numel(), CANDIDATE_GROUP
    if n % g or 4 * g * (m + 1) > n or flat_N.dtype not in (torch.float32, torch.float64):
        return flat_N.topk(m, sorted=False)
    w = n // g
    max_W = flat_N.view(g, w).amax(0)  # group j holds the values at j, j + w, ..., j + (g - 1) w
    if max_W.isnan().any():
        return flat_N.topk(m, sorted=False)
    floor = max_W.kthvalue(w - m).values  # the (m + 1)-th largest group maximum
    group_G = (max_W >= floor).nonzero().squeeze(1)
    cols_C = (group_G + torch.arange(0, n, w, device=flat_N.device)[:, None]).reshape(-1)
    vals_C = flat_N[cols_C]
    reach_C = vals_C >= floor
    vals_C, cols_C = vals_C[reach_C], cols_C[reach_C]
    vals_M1, pos_M1 = vals_C.topk(m + 1, sorted=False)
    last_2 = vals_M1.topk(2, largest=False).values  # the (m + 1)-th and m-th largest values
    if not last_2[1] > last_2[0]:
        return flat_N.topk(m, sorted=False)
    keep_M1 = vals_M1 > last_2[0]
    return vals_M1[keep_M1], cols_C[pos_M1[keep_M1]]

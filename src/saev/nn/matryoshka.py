"""Matryoshka objective (Bussmann et al. 2025, Nabeshima 2024) over any architecture: every nested
prefix of the latents must reconstruct the input on its own, so early latents learn general
features and later ones refine them."""

from jaxtyping import Float
from torch import Tensor

from saev.nn import sparse


def prefixes(sizes: tuple[int, ...], d_sae: int) -> list[int]:
    """Prefix sizes in increasing order, ending with the whole dictionary."""
    return [p for p in sizes if p < d_sae] + [d_sae]


def dense_reconstructions(
    f_BS: Float[Tensor, "batch d_sae"],
    W_dec_SD: Float[Tensor, "d_sae d_vit"],
    b_dec_D: Float[Tensor, " d_vit"],
    sizes: list[int],
) -> list[Float[Tensor, "batch d_vit"]]:
    """Reconstructions from each prefix, built block by block so the total cost is one decode."""
    recons, partial, start = [], b_dec_D.expand(f_BS.shape[0], -1), 0
    for m in sizes:
        partial = partial + f_BS[:, start:m] @ W_dec_SD[start:m]
        recons.append(partial)
        start = m
    return recons


def sparse_reconstructions(
    codes_N: Float[Tensor, " n"],
    active: sparse.Active,
    W_dec_SD: Float[Tensor, "d_sae d_vit"],
    b_dec_D: Float[Tensor, " d_vit"],
    sizes: list[int],
) -> list[Float[Tensor, "batch d_vit"]]:
    """The same from active (token, latent) pairs: each prefix masks the codes of later latents."""
    d_sae = W_dec_SD.shape[0]
    return [
        sparse.decode(codes_N if m == d_sae else codes_N * (active.latent_i < m), active, W_dec_SD) + b_dec_D
        for m in sizes
    ]

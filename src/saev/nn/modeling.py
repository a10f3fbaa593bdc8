"""The sparse autoencoder module: encode ViT activations into sparse codes and decode them back."""

import dataclasses
import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from saev.nn import config
from saev.nn.activations import make_activation

DEFAULT_CLAMP = 1e5
"""The reference clamps activations to [-1e5, 1e5] before normalising them."""


@dataclasses.dataclass(frozen=True)
class ActNorm:
    """Reference activation normalisation: `x' = (clamp(x, -clamp, clamp) - mean) / scale`."""

    mean: Tensor
    """Mean activation, [d_vit]."""
    scale: float
    """Mean L2 distance to `mean`, divided by sqrt(d_vit)."""
    clamp: float = DEFAULT_CLAMP


class Loss:
    """Loss terms of one forward pass, each computed when first read.

    `mse` is the per-element mean squared error in the (normalised) space the SAE was trained
    in; `l0`, `l1` are per-token means; `sparsity = sparsity_coeff * l1`; `loss = mse + sparsity`.
    """

    def __init__(self, x: Tensor, x_hat: Tensor, f_x: Tensor, sparsity_coeff: float):
        self._x, self._x_hat, self._f_x, self._coeff = x, x_hat, f_x, sparsity_coeff

    @functools.cached_property
    def mse(self) -> Tensor:
        return F.mse_loss(self._x_hat, self._x)

    @functools.cached_property
    def l0(self) -> Tensor:
        return (self._f_x > 0).sum(-1, dtype=torch.float32).mean()

    @functools.cached_property
    def l1(self) -> Tensor:
        return self._f_x.abs().sum(-1).mean()

    @functools.cached_property
    def sparsity(self) -> Tensor:
        return self._coeff * self.l1

    @functools.cached_property
    def loss(self) -> Tensor:
        return self.mse + self.sparsity

    def __repr__(self) -> str:
        terms = ", ".join(f"{k}={getattr(self, k).item():.4g}" for k in ("loss", "mse", "l0", "l1"))
        return f"Loss({terms})"


class Output(NamedTuple):
    x_hat: Tensor
    """Reconstruction, in the same space as the input (raw activations)."""
    f_x: Tensor
    """Sparse codes, [..., d_sae]."""
    loss: Loss


class SparseAutoencoder(torch.nn.Module):
    """Sparse autoencoder over ViT activations of any leading shape.

    When normalisation statistics are set (`set_normalization`), inputs are raw activations:
    the SAE normalises them before encoding and `decode` maps reconstructions back.
    """

    act_mean: Tensor | None
    act_scale: Tensor | None

    def __init__(self, cfg: config.SaeConfig, provenance: config.Provenance | None = None):
        super().__init__()
        self.cfg = cfg
        self.provenance = provenance or config.Provenance()
        gen = torch.Generator().manual_seed(cfg.seed)
        W_dec = torch.randn(cfg.d_sae, cfg.d_vit, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(W_dec)
        # Encoder starts as the decoder's transpose: every latent begins aligned with its direction.
        self.W_enc = torch.nn.Parameter(W_dec.T.clone().contiguous())
        self.b_enc = torch.nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(cfg.d_vit))
        self.activation = make_activation(cfg)
        self.register_buffer("act_mean", None)
        self.register_buffer("act_scale", None)
        self.act_clamp = DEFAULT_CLAMP

    # Normalisation

    @property
    def normalization(self) -> ActNorm | None:
        if self.act_mean is None:
            return None
        return ActNorm(self.act_mean, float(self.act_scale), self.act_clamp)

    def set_normalization(self, norm: ActNorm | None) -> None:
        """Attach (or remove, with None) the statistics that map raw activations to training space."""
        if norm is None:
            self.act_mean = self.act_scale = None
            return
        mean = torch.as_tensor(norm.mean, dtype=torch.float32).reshape(self.cfg.d_vit)
        self.act_mean = mean.to(self.b_dec.device)
        self.act_scale = torch.tensor(float(norm.scale), device=self.b_dec.device)
        self.act_clamp = norm.clamp

    def normalize(self, x: Tensor) -> Tensor:
        if self.act_mean is None:
            return x
        return (x.clamp(-self.act_clamp, self.act_clamp) - self.act_mean) / self.act_scale

    def denormalize(self, x: Tensor) -> Tensor:
        if self.act_mean is None:
            return x
        return x * self.act_scale + self.act_mean

    # Forward

    def pre_acts(self, x_n: Tensor) -> Tensor:
        """Encoder pre-activations of already-normalised inputs."""
        if self.cfg.subtract_b_dec:
            x_n = x_n - self.b_dec
        return F.linear(x_n, self.W_enc.T, self.b_enc)

    def encode(self, x: Tensor) -> Tensor:
        """Sparse codes [..., d_sae] of raw activations [..., d_vit]."""
        return self.activation(self.pre_acts(self.normalize(x)))

    def decode_normalized(self, f_x: Tensor) -> Tensor:
        return F.linear(f_x, self.W_dec.T, self.b_dec)

    def decode(self, f_x: Tensor) -> Tensor:
        """Reconstruction in raw activation space."""
        return self.denormalize(self.decode_normalized(f_x))

    def forward(self, x: Tensor) -> Output:
        x_n = self.normalize(x)
        f_x = self.activation(self.pre_acts(x_n))
        x_hat_n = self.decode_normalized(f_x)
        loss = Loss(x_n, x_hat_n, f_x, self.cfg.sparsity_coeff)
        return Output(self.denormalize(x_hat_n), f_x, loss)

    # Training helpers (the reference's options)

    @torch.no_grad()
    def normalize_w_dec(self) -> None:
        if self.cfg.normalize_w_dec:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_parallel_grads(self) -> None:
        """Drop the part of W_dec's gradient that only changes row norms (undone by normalize_w_dec)."""
        if not self.cfg.remove_parallel_grads or self.W_dec.grad is None:
            return
        parallel_S = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel_S * self.W_dec

    def extra_repr(self) -> str:
        act = self.cfg.activation
        norm = "normalised inputs" if self.act_mean is not None else "no normalisation stats"
        return f"d_vit={self.cfg.d_vit}, d_sae={self.cfg.d_sae}, activation={act}, {norm}"


def estimate_normalization(acts_ND: Tensor, clamp: float = DEFAULT_CLAMP) -> ActNorm:
    """The reference formula: mean activation, and mean distance to it over sqrt(d_vit).

    Give it a sample of the activations the SAE will see (the reference uses 2**19 tokens
    chosen by `numpy.random.default_rng(42).permutation`; see `saev.data.normalization`).
    Accumulates in float64 so the estimate does not drift with sample size.
    """
    if acts_ND.ndim != 2 or len(acts_ND) == 0:
        raise ValueError(f"expected a non-empty [n, d_vit] tensor, got shape {tuple(acts_ND.shape)}.")
    x = acts_ND.to(torch.float64).clamp(-clamp, clamp)
    mean = x.mean(dim=0)
    scale = (x - mean).norm(dim=1).mean() / math.sqrt(x.shape[1])
    return ActNorm(mean.to(torch.float32), float(scale), clamp)

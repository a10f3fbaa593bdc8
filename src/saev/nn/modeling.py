"""The sparse autoencoder module: encode ViT activations into sparse codes and decode them back."""

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from saev.nn import architectures, config
from saev.normalization import DEFAULT_CLAMP, ActNorm, denormalize, normalize


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
    the SAE normalises them before encoding and `decode` maps reconstructions back. The
    architecture (`cfg.activation`, see `saev.nn.architectures`) turns pre-activations into codes;
    its own weights, if any, live in `self.activation`.
    """

    act_mean: Tensor | None
    act_scale: Tensor | None
    """Set together by `set_normalization`: both None or both tensors."""

    def __init__(
        self, cfg: config.SaeConfig, provenance: config.Provenance | None = None, *, init: bool = True
    ):
        """`init=False` leaves the weights uninitialised, for loaders that overwrite them all (drawing
        a ViT-B-sized SAE's random weights takes longer than reading its file)."""
        super().__init__()
        self.cfg = cfg
        self.provenance = provenance or config.Provenance()
        self.arch = architectures.of(cfg.activation)
        if init:
            gen = torch.Generator().manual_seed(cfg.seed)
            W_dec = torch.randn(cfg.d_sae, cfg.d_vit, generator=gen)
            W_dec /= W_dec.norm(dim=1, keepdim=True)
            # Encoder starts as the decoder's transpose: every latent begins aligned with its direction.
            W_enc = W_dec.T.clone().contiguous()
        else:
            W_dec, W_enc = torch.empty(cfg.d_sae, cfg.d_vit), torch.empty(cfg.d_vit, cfg.d_sae)
        self.W_dec = torch.nn.Parameter(W_dec)
        self.W_enc = torch.nn.Parameter(W_enc)
        self.b_enc = torch.nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(cfg.d_vit))
        self.activation = self.arch.module(cfg.activation, cfg.d_sae)
        self.register_buffer("act_mean", None)
        self.register_buffer("act_scale", None)
        self.act_clamp = DEFAULT_CLAMP

    # Normalisation

    @property
    def normalization(self) -> ActNorm | None:
        if self.act_mean is None or self.act_scale is None:
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

    def normalize(self, x: Float[Tensor, "*batch d_vit"]) -> Float[Tensor, "*batch d_vit"]:
        if self.act_mean is None or self.act_scale is None:
            return x
        return normalize(x, self.act_mean, self.act_scale, self.act_clamp)

    def denormalize(self, x: Float[Tensor, "*batch d_vit"]) -> Float[Tensor, "*batch d_vit"]:
        if self.act_mean is None or self.act_scale is None:
            return x
        return denormalize(x, self.act_mean, self.act_scale)

    # Forward

    def pre_acts(self, x_n: Float[Tensor, "*batch d_vit"]) -> Float[Tensor, "*batch d_sae"]:
        """Encoder pre-activations of already-normalised inputs."""
        if self.cfg.subtract_b_dec:
            x_n = x_n - self.b_dec
        return F.linear(x_n, self.W_enc.T, self.b_enc)

    def encode_normalized(self, x_n: Float[Tensor, "*batch d_vit"]) -> Float[Tensor, "*batch d_sae"]:
        """Sparse codes of already-normalised inputs."""
        return self.arch.encode(self, self.pre_acts(x_n))

    def encode(self, x: Float[Tensor, "*batch d_vit"]) -> Float[Tensor, "*batch d_sae"]:
        """Sparse codes [..., d_sae] of raw activations [..., d_vit]."""
        return self.encode_normalized(self.normalize(x))

    def decode_normalized(self, f_x: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_vit"]:
        return F.linear(f_x, self.W_dec.T, self.b_dec)

    def decode(self, f_x: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_vit"]:
        """Reconstruction in raw activation space."""
        return self.denormalize(self.decode_normalized(f_x))

    def forward(self, x: Float[Tensor, "*batch d_vit"]) -> Output:
        x_n = self.normalize(x)
        f_x = self.encode_normalized(x_n)
        x_hat_n = self.decode_normalized(f_x)
        loss = Loss(x_n, x_hat_n, f_x, self.cfg.sparsity_coeff)
        return Output(self.denormalize(x_hat_n), f_x, loss)

    # Training helpers (the reference's options)

    @torch.no_grad()
    def normalize_w_dec(self) -> None:
        if self.cfg.normalize_w_dec:
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

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

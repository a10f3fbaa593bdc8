"""What an SAE architecture is: the interface every module in `saev.nn.architectures` implements.

An architecture owns four things, all in its own module:

- its **config**, a frozen dataclass saved in checkpoints as `{"cls": <class name>, "params": {...}}`;
- its **activation module**, which turns encoder pre-activations into codes and holds any weights of
  its own (saved under `activation.` in native checkpoints, so no loader changes are needed);
- its **training options**, a frozen dataclass whose fields become `saev train` flags and sweep keys
  (options shared by several architectures are declared once, below, and inherited);
- its **training terms**: the sparsity penalty and any auxiliary loss, whether the AuxK loss applies,
  and whether the sparse (active-latents-only) path can train it.
"""

import dataclasses
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from saev.errors import ConfigError
from saev.nn import sparse

Inputs = Float[Tensor, "batch d_vit"]
"""A training batch of normalised activations."""
Codes = Float[Tensor, "batch d_sae"]
"""Pre-activations or codes of a training batch."""


@runtime_checkable
class Autoencoder(Protocol):
    """The parts of `SparseAutoencoder` an architecture's training terms read."""

    # Read-only properties, so that `torch.nn.Parameter` attributes (a Tensor subclass) satisfy them.
    @property
    def W_enc(self) -> Tensor: ...
    @property
    def b_enc(self) -> Tensor: ...
    @property
    def W_dec(self) -> Tensor: ...
    @property
    def b_dec(self) -> Tensor: ...
    @property
    def activation(self) -> torch.nn.Module: ...


class Penalty(NamedTuple):
    """Loss terms an architecture adds to the reconstruction error (0-dim tensors)."""

    sparsity: Tensor
    aux: Tensor


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoOptions:
    """An architecture without training options of its own."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class KOption:
    k: int = 32
    """Active latents per token (topk, batchtopk)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class CoeffOption:
    sparsity_coeff: float | None = None
    """Weight of the sparsity penalty, L1 of the codes (relu, gated) or their L0 (jumprelu), fixed for the run; with --target-l0, where the adapted coefficient starts. Default: adapted to --target-l0 (32 when not given), starting from the architecture's own (relu 0.05, jumprelu 0.01, gated 0.15)."""


class Architecture:
    """Base class; each architecture module defines one subclass and one instance of it."""

    name: ClassVar[str]
    """The `--arch` value, also the first part of a run id."""
    config: ClassVar[type]
    """The checkpointed settings (frozen dataclass; its class name is the checkpoint's `cls`)."""
    options: ClassVar[type] = NoOptions
    """Training options (frozen, keyword-only dataclass); fields become `saev train` flags."""
    auxk: ClassVar[bool] = False
    """Whether the AuxK loss (dead latents reconstruct the residual) applies."""
    default_coeff: ClassVar[float] = 0.0
    """The sparsity coefficient when `--sparsity-coeff` is not given (normalised activations)."""

    def build(self, opts: Any) -> Any:
        """The architecture's config from the training options (a `TrainConfig`)."""
        raise NotImplementedError

    def module(self, act_cfg: Any, d_sae: int) -> torch.nn.Module:
        """The activation module: pre-activations [..., d_sae] -> codes of the same shape."""
        raise NotImplementedError

    def tag(self, opts: Any) -> str:
        """The run-id part naming the sparsity setting, e.g. `k32`, `c0.0004`, or `l0-32` for a target L0."""
        return f"l0-{opts.target_l0:g}" if opts.target_l0 is not None else f"c{opts.coefficient():g}"

    def check(self, opts: Any, d_sae: int) -> None:
        """Raise ConfigError for options that cannot work with `d_sae` latents."""

    def encode(
        self, sae: Autoencoder, pre_BS: Float[Tensor, "*batch d_sae"]
    ) -> Float[Tensor, "*batch d_sae"]:
        """Codes from pre-activations; architectures whose codes need more than `pre` override it."""
        return sae.activation(pre_BS)

    def penalty(
        self, sae: Autoencoder, x_BD: Inputs, pre_BS: Codes, f_BS: Codes, coeff: float | Tensor
    ) -> Penalty:
        """Sparsity and auxiliary terms of a training step (dense path); none by default."""
        zero = torch.zeros((), device=x_BD.device)
        return Penalty(zero, zero)

    def sparse_k(self, act_cfg: Any) -> int | None:
        """Latents per token when the sparse training path can train this config, else None."""
        return None

    def select(
        self, sae: Autoencoder, pre_BS: Float[Tensor, "batch d_sae"], per_token: bool
    ) -> sparse.Active:
        """The active (token, latent) pairs of a batch on the sparse path."""
        raise NotImplementedError

    def per_token_warmup(self, opts: Any) -> float:
        """Fraction of training that selects the top k per token before the architecture's own rule."""
        return 0.0

    def automatic(self, opts: Any) -> dict[str, Any]:
        """The values this run's options left at None (automatic) stand for."""
        return {}

    def start_at(self, sae: Autoencoder, threshold_S: Tensor) -> None:
        """Move the encoder so that each latent fires where its pre-activation (with the present
        weights) exceeds `threshold_S`: how a run with a target L0 starts (`training.sparsity`).
        Architectures whose sparsity is a k need no start."""

    def fast_parameters(self) -> tuple[str, ...]:
        """Names of the parameters a run with a target L0 trains at `sparsity.FAST_LR_FACTOR` times
        the learning rate."""
        return ()


def topk_per_token(pre_BS: Codes, k: int) -> sparse.Active:
    """The k largest pre-activations of every token."""
    return sparse.Active.from_topk(pre_BS.topk(k, dim=-1, sorted=False).indices)


def check_k(k: int, d_sae: int) -> None:
    if k <= 0:
        raise ConfigError(f"--k must be positive, got {k}.")
    if k >= d_sae:
        raise ConfigError(f"--k {k} must be smaller than d_sae = {d_sae}.")

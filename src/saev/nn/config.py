"""Configuration of a sparse autoencoder: shapes, activation function and forward variant."""

import dataclasses
from typing import Any

from saev.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Relu:
    """ReLU codes, made sparse by an L1 penalty during training (the reference objective)."""


@dataclasses.dataclass(frozen=True)
class TopK:
    """Keep the k largest pre-activations of every token; the rest are zero."""

    k: int = 32
    """Number of latents active per token."""
    relu: bool = True
    """Zero negative values among the top k (False reproduces reference V2 TopK checkpoints)."""


@dataclasses.dataclass(frozen=True)
class BatchTopK:
    """Keep the batch_size * k largest pre-activations of a training batch.

    During training a threshold is learned (a running estimate of the smallest kept value);
    at inference codes are `pre * (pre > threshold)`, so they do not depend on the batch.
    """

    k: int = 32
    """Average number of latents active per token."""


@dataclasses.dataclass(frozen=True)
class JumpRelu:
    """Per-latent learned thresholds: `f = pre * (pre > theta)`, trained with a straight-through estimator."""

    init_threshold: float = 1e-3
    """Initial value of every threshold."""
    bandwidth: float = 1e-3
    """Width of the rectangle kernel of the straight-through estimator."""


Activation = Relu | TopK | BatchTopK | JumpRelu
ACTIVATIONS: dict[str, type] = {
    "Relu": Relu,
    "TopK": TopK,
    "BatchTopK": BatchTopK,
    "JumpRelu": JumpRelu,
}


@dataclasses.dataclass(frozen=True)
class SaeConfig:
    """Everything needed to rebuild a sparse autoencoder's forward pass."""

    d_vit: int
    """Width of the ViT activations the SAE reads."""
    d_sae: int
    """Number of latents."""
    activation: Activation = Relu()
    """Activation function that turns pre-activations into sparse codes."""
    subtract_b_dec: bool = True
    """Whether the encoder reads `x - b_dec` (reference checkpoints V0a-V1) or `x` (V2)."""
    sparsity_coeff: float = 4e-4
    """Weight of the sparsity term in `loss` (L1 for ReLU, L0 for JumpReLU, unused by TopK)."""
    normalize_w_dec: bool = True
    """Keep decoder rows at unit norm during training."""
    remove_parallel_grads: bool = True
    """Remove the gradient component parallel to each decoder row during training."""
    seed: int = 0
    """Seed of the weight initialisation."""

    def __post_init__(self):
        if self.d_vit <= 0 or self.d_sae <= 0:
            raise ConfigError(
                f"d_vit and d_sae must be positive, got d_vit={self.d_vit}, d_sae={self.d_sae}."
            )
        k = getattr(self.activation, "k", None)
        if k is not None and not 0 < k < self.d_sae:
            raise ConfigError(f"k must be in [1, d_sae) = [1, {self.d_sae}), got k={k}.")

    @property
    def exp_factor(self) -> float:
        return self.d_sae / self.d_vit

    def to_dict(self) -> dict[str, Any]:
        dct = dataclasses.asdict(self)
        dct["activation"] = {
            "cls": type(self.activation).__name__,
            "params": dataclasses.asdict(self.activation),
        }
        return dct

    @classmethod
    def from_dict(cls, dct: dict[str, Any]) -> "SaeConfig":
        """Inverse of `to_dict`; raises ConfigError naming unknown keys or activations."""
        dct = dict(dct)
        act = dct.pop("activation", {"cls": "Relu", "params": {}})
        act_cls = ACTIVATIONS.get(act.get("cls"))
        if act_cls is None:
            raise ConfigError(
                f"unknown activation {act.get('cls')!r}; expected one of {sorted(ACTIVATIONS)}."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(dct) - known)
        if unknown:
            raise ConfigError(f"unknown SAE config keys {unknown} (written by a newer saev?).")
        try:
            return cls(activation=act_cls(**act.get("params", {})), **dct)
        except TypeError as err:
            raise ConfigError(f"invalid SAE config {dct}: {err}") from None


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where an SAE's training activations came from, so users can record matching ones."""

    vit_family: str | None = None
    vit_ckpt: str | None = None
    layer: int | None = None
    """Transformer block whose output the SAE reads (negative counts from the end)."""
    tokens: str | None = None
    """Token selection the SAE was trained on: 'patches', 'cls' or 'all'."""
    n_patches_per_img: int | None = None
    source: str | None = None
    """What produced the file: a reference header variant ('V0b', ...) or 'saev <version>'."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, dct: dict[str, Any]) -> "Provenance":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dct.items() if k in known})

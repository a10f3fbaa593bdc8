"""Configuration of a sparse autoencoder: shapes, architecture config and forward variant."""

import dataclasses
from typing import Any

from saev.errors import ConfigError
from saev.nn import architectures
from saev.nn.architectures import Activation
from saev.nn.architectures.relu import Relu


@dataclasses.dataclass(frozen=True)
class SaeConfig:
    """Everything needed to rebuild a sparse autoencoder's forward pass."""

    d_vit: int
    """Width of the ViT activations the SAE reads."""
    d_sae: int
    """Number of latents."""
    activation: Activation = Relu()
    """The architecture's config (see `saev.nn.architectures`): how pre-activations become codes."""
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
        act_cls = architectures.CONFIGS.get(act.get("cls"))
        if act_cls is None:
            raise ConfigError(
                f"unknown activation {act.get('cls')!r}; expected one of {sorted(architectures.CONFIGS)}."
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

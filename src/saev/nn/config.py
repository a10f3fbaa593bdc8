"""Configuration of a sparse autoencoder: shapes, architecture config and forward variant."""

import dataclasses
import reprlib
import sys
import typing
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
        # The range torch.Generator.manual_seed accepts; larger seeds would fail while building the model.
        if not -(2**63) <= self.seed < 2**64:
            raise ConfigError(f"seed must fit in 64 bits, got {reprlib.repr(self.seed)}.")

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
    def from_dict(cls, dct: Any) -> "SaeConfig":
        """Inverse of `to_dict`; raises ConfigError naming unknown keys or activations and mistyped values."""
        if not isinstance(dct, dict):
            raise ConfigError(f"SAE config must be an object, got {reprlib.repr(dct)}.")
        dct = dict(dct)
        act = dct.pop("activation", {"cls": "Relu", "params": {}})
        if not isinstance(act, dict) or not isinstance(act.get("params", {}), dict):
            raise ConfigError(
                f"'activation' must be an object {{'cls': NAME, 'params': {{...}}}}, got {reprlib.repr(act)}."
            )
        name = act.get("cls")
        act_cls = architectures.CONFIGS.get(name) if isinstance(name, str) else None
        if act_cls is None:
            raise ConfigError(
                f"unknown activation {reprlib.repr(name)}; expected one of {sorted(architectures.CONFIGS)}."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(dct) - known)
        if unknown:
            raise ConfigError(f"unknown SAE config keys {unknown} (written by a newer saev?).")
        params = act.get("params", {})
        check_types(cls, dct, "config field")
        check_types(act_cls, params, f"{name} parameter")
        try:
            return cls(activation=act_cls(**params), **dct)
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
    """What produced the file: a reference header variant ('V0b', ...), 'saev <version>', or the library
    whose format it was read from ('saelens', 'sparsify', 'prisma')."""
    dataset: str | None = None
    """Images the SAE was trained on, as its model card or store names them."""
    origin: dict | None = None
    """A foreign file's own config, verbatim ({'format': ..., 'config': {...}}): SAELens' metadata such
    as hook_name stays available, and converting back restores it."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, dct: Any) -> "Provenance":
        """Inverse of `to_dict`; keys written by a newer saev are ignored, mistyped values refused."""
        if not isinstance(dct, dict):
            raise ConfigError(f"provenance must be an object, got {reprlib.repr(dct)}.")
        known = {f.name for f in dataclasses.fields(cls)}
        dct = {k: v for k, v in dct.items() if k in known}
        check_types(cls, dct, "provenance field")
        return cls(**dct)


_KINDS: dict[type, tuple[typing.Callable[[object], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    # isinstance(True, int) holds in Python, but a JSON `true` is no count or dimension.
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    # The bound refuses NaN, infinities and integers too large for a float.
    float: (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and abs(v) <= sys.float_info.max,
        "a finite number",
    ),
    str: (lambda v: isinstance(v, str), "a string"),
    dict: (lambda v: isinstance(v, dict), "an object"),
}


def checked(name: str, value: object, kind: type) -> Any:
    """`value` if it is a `kind` (bool, int, float or str) in the strict sense of `_KINDS`, else ConfigError.

    Checkpoint headers are untrusted JSON, and dataclasses do not check types: a `true` d_vit, a NaN
    coefficient or a string seed would otherwise fail far from the file, or not at all.
    """
    accepts, words = _KINDS[kind]
    if not accepts(value):
        raise ConfigError(f"{name} must be {words}, got {reprlib.repr(value)}.")
    return value


def check_types(cls: type, dct: dict[str, Any], what: str) -> None:
    """Check with `checked` each value of `dct` that sets a field of dataclass `cls` (`X` or `X | None`)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name not in dct:
            continue
        value, kinds = dct[field.name], typing.get_args(hints[field.name]) or (hints[field.name],)
        if value is None and type(None) in kinds:
            continue
        kind = next(k for k in kinds if k is not type(None))
        checked(f"{what} '{field.name}'", value, kind)

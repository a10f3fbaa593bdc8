"""SAE architectures, one module each; this registry is the only list of them.

To add one, write `saev/nn/architectures/<name>.py` defining an `Architecture` subclass and an
instance `ARCHITECTURE`, then register it below. Its config is saved in checkpoints, its options
become `saev train` flags and sweep keys, and its name becomes an `--arch` choice.
"""

import dataclasses
import typing

from saev.errors import ConfigError
from saev.nn.architectures import batchtopk, gated, jumprelu, relu, topk
from saev.nn.architectures.base import Architecture

ARCHITECTURES: dict[str, Architecture] = {
    module.ARCHITECTURE.name: module.ARCHITECTURE
    for module in (
        relu,
        topk,
        batchtopk,
        jumprelu,
        gated,
    )
}
"""By `--arch` name, in the order the CLI lists them."""

_BY_CONFIG: dict[type, Architecture] = {arch.config: arch for arch in ARCHITECTURES.values()}
CONFIGS: dict[str, type] = {cls.__name__: cls for cls in _BY_CONFIG}
"""Checkpointed config classes by the `cls` name saved in checkpoints."""

if typing.TYPE_CHECKING:
    # A type checker cannot read types built from the registry; tests/test_typing_registries.py
    # checks that this union lists exactly the registry's config classes.
    ArchName = str
    Activation = relu.Relu | topk.TopK | batchtopk.BatchTopK | jumprelu.JumpRelu | gated.Gated
else:
    ArchName = typing.Literal[tuple(ARCHITECTURES)]  # the `--arch` choices tyro offers and checks
    Activation = typing.Union[tuple(_BY_CONFIG)]  # noqa: UP007
"""Any architecture's config."""


def by_name(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[name]


def of(act_cfg: object) -> Architecture:
    """The architecture a checkpointed config belongs to."""
    return _BY_CONFIG[type(act_cfg)]


def option_classes() -> tuple[type, ...]:
    """Every architecture's options class, each once, subclasses before their bases (for a valid MRO)."""
    classes = list(dict.fromkeys(arch.options for arch in ARCHITECTURES.values()))
    return tuple(c for c in classes if not any(o is not c and issubclass(o, c) for o in classes))


def option_names(name: str) -> tuple[str, ...]:
    """The training options `--arch name` reads."""
    return tuple(f.name for f in dataclasses.fields(by_name(name).options))


def readers(option: str) -> list[str]:
    """The architectures that read the training option `option`, in registry order."""
    return [name for name in ARCHITECTURES if option in option_names(name)]


def all_option_names() -> tuple[str, ...]:
    """Every architecture's training options, each once."""
    return tuple(dict.fromkeys(o for name in ARCHITECTURES for o in option_names(name)))

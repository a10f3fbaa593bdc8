"""Sweep files: a TOML table of TrainConfig keys; list values expand to their Cartesian product."""

import dataclasses
import itertools
import pathlib
import tomllib
from typing import Any

from saev.errors import ConfigError
from saev.training.config import TrainConfig

NOT_SWEEPABLE = ("sweep", "resume", "out")


def expand(base: TrainConfig, sweep: dict[str, Any], source: str = "sweep") -> list[TrainConfig]:
    """Every combination of the swept values applied to `base`, in a stable order."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(sweep) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown keys {unknown}; valid keys: {sorted(set(fields) - set(NOT_SWEEPABLE))}."
        )
    fixed = sorted(set(sweep) & set(NOT_SWEEPABLE))
    if fixed:
        raise ConfigError(f"{source}: {fixed} cannot be swept.")
    keys = list(sweep)
    values = [_choices(k, v) for k, v in sweep.items()]
    cfgs = []
    for combo in itertools.product(*values):
        changes = {k: _coerce(k, v, source) for k, v in zip(keys, combo, strict=True)}
        cfgs.append(dataclasses.replace(base, sweep=None, **changes))
    return cfgs


def load(base: TrainConfig) -> list[TrainConfig]:
    if base.sweep is None:
        return [base]
    path = pathlib.Path(base.sweep)
    try:
        sweep = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: sweep file not found.") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err}).") from None
    cfgs = expand(base, sweep, str(path))
    if not cfgs:
        raise ConfigError(f"{path}: expands to no configurations (an empty list?).")
    return cfgs


def _choices(key: str, value: Any) -> list[Any]:
    """A list sweeps its elements; for matryoshka_prefixes (itself a list) only a list of lists sweeps."""
    if key == "matryoshka_prefixes":
        return value if value and all(isinstance(v, list) for v in value) else [value]
    return value if isinstance(value, list) else [value]


def _coerce(key: str, value: Any, source: str) -> Any:
    if key == "matryoshka_prefixes":
        return tuple(value)
    if key in ("shards",):
        return pathlib.Path(value)
    field = {f.name: f for f in dataclasses.fields(TrainConfig)}[key]
    if field.type in (float, "float") and isinstance(value, int):
        return float(value)
    if field.type in (int, "int") and not isinstance(value, int):
        raise ConfigError(f"{source}: {key} must be an integer, got {value!r}.")
    return value

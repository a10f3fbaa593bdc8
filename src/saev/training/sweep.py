"""Sweep files: a TOML table of TrainConfig keys; list values expand to their Cartesian product."""

import dataclasses
import itertools
import math
import pathlib
import tomllib
import types
import typing
from typing import Any

from saev.errors import ConfigError
from saev.fileio import read_text
from saev.nn import architectures
from saev.training.config import TrainConfig

NOT_SWEEPABLE = ("sweep", "resume", "out")
MAX_RUNS = 1024
"""The most runs one sweep file may expand to."""


def expand(base: TrainConfig, sweep: dict[str, Any], source: str = "sweep") -> list[TrainConfig]:
    """Every combination of the swept values applied to `base`, in a stable order.

    An architecture's options apply to its own runs only: sweeping `arch = ["topk", "relu"]` with
    `k = [16, 32]` gives two TopK runs and one ReLU run. An option that no run reads is refused."""
    fields = {f.name for f in dataclasses.fields(TrainConfig) if f.init}
    unknown = sorted(set(sweep) - fields)
    if unknown:
        raise ConfigError(
            f"{source}: unknown keys {unknown}; valid keys: {sorted(fields - set(NOT_SWEEPABLE))}."
        )
    fixed = sorted(set(sweep) & set(NOT_SWEEPABLE))
    if fixed:
        raise ConfigError(f"{source}: {fixed} cannot be swept.")
    keys = list(sweep)
    values = [_choices(k, v) for k, v in sweep.items()]
    n_runs = math.prod(len(v) for v in values)
    if n_runs > MAX_RUNS:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in zip(keys, values, strict=True) if len(v) > 1)
        raise ConfigError(
            f"{source}: expands to {n_runs:,} runs ({sizes}); saev trains at most {MAX_RUNS:,} per sweep "
            "(each trains in memory beside the others): split it into several sweep files."
        )
    cfgs: list[TrainConfig] = []
    for combo in itertools.product(*values):
        changes = {k: _coerce(k, v, source) for k, v in zip(keys, combo, strict=True)}
        cfg = dataclasses.replace(base, sweep=None, **changes).for_own_arch()
        if cfg not in cfgs:
            cfgs.append(cfg)
    _check_read(base, keys, cfgs, source)
    return cfgs


def _check_read(base: TrainConfig, keys: list[str], cfgs: list[TrainConfig], source: str) -> None:
    """Refuse a swept option, or one given beside the sweep file, that no run's architecture reads."""
    given = [*keys, *base.options_set()]
    archs = list(dict.fromkeys(cfg.arch for cfg in cfgs))
    for name in dict.fromkeys(given):
        if name in architectures.all_option_names() and not any(
            a in architectures.readers(name) for a in archs
        ):
            raise ConfigError(
                f"{source}: {name} is an option of {' and '.join(architectures.readers(name))}, but this "
                f"sweep trains {' and '.join(archs)} only."
            )


def load(base: TrainConfig) -> list[TrainConfig]:
    if base.sweep is None:
        return [base]
    path = pathlib.Path(base.sweep)
    try:
        sweep = tomllib.loads(read_text(path, "sweep file"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err}).") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML (nested too deeply).") from None
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
    """`value` as the type of TrainConfig's `key`, or a ConfigError naming what it should be."""
    hint = typing.get_type_hints(TrainConfig)[key]
    try:
        return _convert(value, hint)
    except TypeError:
        raise ConfigError(f"{source}: {key} must be {_expected(hint)}, got {value!r}.") from None


def _convert(value: Any, hint: Any) -> Any:
    """A TOML value (str, int, float, bool, list) as a field of type `hint`; TypeError if it does not fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # TOML has no null, so only the non-None members apply
        for arg in args:
            try:
                return _convert(value, arg)
            except TypeError:
                continue
        raise TypeError(value)
    if origin is typing.Literal and isinstance(value, str) and value in args:
        return value
    if origin is tuple and isinstance(value, list):
        return tuple(_convert(v, args[0]) for v in value)
    if hint is bool and isinstance(value, bool):
        return value
    # bool is an int subclass: `true` is no count.
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if hint is pathlib.Path and isinstance(value, str):
        return pathlib.Path(value)
    raise TypeError(value)


def _expected(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {_expected(args[0]).removeprefix('an ').removeprefix('a ')}s"
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        pathlib.Path: "a path",
    }
    return names[hint]

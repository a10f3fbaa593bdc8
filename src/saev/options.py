"""Checks every config shares, for the CLI and the library alike: numbers are finite (infinite only
where the default is), a device exists on this machine, and how much memory it offers."""

import dataclasses
import math
import os
from typing import Any

import torch

from saev.errors import ConfigError


def flag(name: str) -> str:
    """The command-line flag of a config field."""
    return "--" + name.replace("_", "-")


def check_finite(cfg: Any) -> None:
    """A ConfigError naming the first float field (or float in a tuple field) of the dataclass `cfg`
    that is NaN, or infinite where its default is not."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        values = value if isinstance(value, tuple) else (value,)
        defaults = field.default if isinstance(field.default, tuple) else (field.default,)
        infinite_default = any(isinstance(d, float) and math.isinf(d) for d in defaults)
        for v in values:
            if isinstance(v, float) and (math.isnan(v) or (math.isinf(v) and not infinite_default)):
                raise ConfigError(f"{flag(field.name)} must be a finite number, got {value}.")


MAX_SEED = 2**63 - 1
"""Seeds go to numpy and torch generators, which take 0 .. 2**63 - 1."""


def check_integers(cfg: Any) -> None:
    """A ConfigError naming the first integer field (or integer in a tuple field) of the dataclass `cfg`
    beyond int64, where every count and index ends up (tensors, numpy, itertools), or a seed field
    (`seed`, `data_seed`, ...) outside 0 .. MAX_SEED."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name.endswith("seed") and isinstance(value, int) and not 0 <= value <= MAX_SEED:
            raise ConfigError(f"{flag(field.name)} must be in 0..2**63-1, got {value}.")
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, int) and not isinstance(v, bool) and not -MAX_SEED - 1 <= v <= MAX_SEED:
                raise ConfigError(f"{flag(field.name)} {v} is out of range (at most 2**63-1 in size).")


def available_memory(device: str) -> tuple[int, str] | None:
    """Bytes a command may use on `device` and what they are, or None where torch cannot tell."""
    dev = check_device(device)
    if dev.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory"
        except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
            return None
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0], "free GPU memory"
    return None


def size_text(n_bytes: int) -> str:
    """A size for messages, in MiB below a GiB."""
    if n_bytes < 2**30:
        return f"{n_bytes / 2**20:,.1f} MiB"
    return f"{n_bytes / 2**30:,.1f} GiB"


def check_device(name: str) -> torch.device:
    """`name` as a torch device; a ConfigError unless this machine has it."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"--device {name}: this machine has no CUDA GPU that torch can use; use --device cpu."
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name}: this machine has {count} CUDA GPU(s), numbered from 0.")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: MPS is not available on this machine; use --device cpu.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {name}: saev runs on cpu, cuda or mps.")
    return device

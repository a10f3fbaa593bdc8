"""`saev convert SRC DST --to FORMAT`: rewrite an SAE in another library's format, verified."""

import dataclasses
import sys
from typing import Annotated, Literal

import tyro

from saev.commands.base import Command
from saev.errors import CheckpointError
from saev.nn import conversion, formats

Target = Literal[formats.WRITABLE]  # type: ignore[valid-type]


@dataclasses.dataclass(frozen=True)
class Config:
    """Convert an SAE between formats: native (sae.safetensors), saev-pt (the reference sae.pt), saelens
    (folder for SAELens' SAE.load_from_disk) or sparsify (folder for SparseCoder.load_from_disk). The
    result is read back and compared with the source on a fixed batch before the command succeeds."""

    src: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SRC")]
    """SAE to read: a file or folder in any supported format, hf://ORG/NAME[/PATH] or a catalogue name."""
    dst: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="DST")]
    """Where to write: a file for native (.safetensors) and saev-pt (.pt), a folder for saelens and sparsify."""
    to: Target | None = None
    """Target format; default from DST's suffix (.safetensors: native, .pt: saev-pt)."""
    overwrite: bool = False
    """Write over DST if it exists (for a folder: its SAE files; other files stay)."""


def run(cfg: Config) -> conversion.Conversion:
    to = cfg.to or {".safetensors": "native", ".pt": "saev-pt"}.get(_suffix(cfg.dst))
    if to is None:
        raise CheckpointError(
            f"{cfg.dst}: give --to ({', '.join(formats.WRITABLE)}); only .safetensors and .pt imply a format."
        )
    return conversion.convert(cfg.src, cfg.dst, to, overwrite=cfg.overwrite)


def _suffix(path: str) -> str:
    return path[path.rfind(".") :] if "." in path.rsplit("/", 1)[-1] else ""


def report(result: conversion.Conversion) -> None:
    a = result.agreement
    print(
        f"{result.source} ({result.source_format}) -> {result.target} ({result.target_format}); verified on "
        f"{a.n_tokens} tokens: largest code difference {a.max_code_error:.2g} (codes up to {a.code_scale:.3g}), "
        f"reconstruction {a.max_recon_error:.2g}.",
        file=sys.stderr,
    )
    print(result.target)


COMMAND = Command(Config, run, report)

"""`saev export RUN_DIR OUT`: a finished run as a folder ready for the Hugging Face Hub."""

import dataclasses
import pathlib
import sys
from typing import Annotated, Literal

import tyro

from saev.commands.base import Command
from saev.fileio import OutputFolder
from saev.nn import formats
from saev.training import export

Format = Literal[formats.WRITABLE]  # type: ignore[valid-type]


@dataclasses.dataclass(frozen=True)
class Config:
    """Write a finished training run as a Hub-ready folder: the SAE, the run's record (saev_run.json) and a
    README.md model card (architecture, ViT, layer, tokens, dataset, training tokens, held-out metrics,
    normalisation, a loading snippet). Publish it with `hf upload ORG/NAME OUT .`; then
    `saev.nn.load("hf://ORG/NAME")` reads it."""

    run_dir: Annotated[pathlib.Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """A run folder written by `saev train` (runs/<run id>)."""
    out: Annotated[OutputFolder, tyro.conf.Positional, tyro.conf.arg(metavar="OUT")]
    """Folder to write (new or empty)."""
    format: Format = "native"
    """Weights format: native (sae.safetensors, normalisation kept), saelens or sparsify (folders those
    libraries load, normalisation folded into the weights) or saev-pt (the reference sae.pt)."""
    repo: str = "ORG/NAME"
    """Hub repo id the card's loading snippet names."""
    overwrite: bool = False
    """Write into an OUT that holds files: the SAE files there (of any format) and the card are replaced, the rest stay."""


def run(cfg: Config) -> export.Exported:
    return export.export(cfg.run_dir, cfg.out, cfg.format, cfg.repo, cfg.overwrite)


def report(result: export.Exported) -> None:
    names = ", ".join(p.name for p in result.files)
    print(
        f"wrote {names}; publish with: hf upload {result.repo} {result.folder} .",
        file=sys.stderr,
    )
    print(result.folder)


COMMAND = Command(Config, run, report)

"""`saev inspect`: which latents fire on each image, drawn as heatmaps over the crop the ViT saw
(`saev.visuals.inspect`)."""

import dataclasses
import pathlib
import sys
from typing import Annotated

import tyro

from saev.commands.base import Command
from saev.steering.inputs import load_batches
from saev.visuals.inspect import InspectConfig, Inspection, inspect


@dataclasses.dataclass(frozen=True)
class Config(InspectConfig):
    """Encode images with an SAE and draw each one's strongest latents."""

    images: Annotated[tuple[pathlib.Path, ...], tyro.conf.Positional]
    """Image files to inspect."""


def run(cfg: Config) -> Inspection:
    return inspect(cfg, load_batches)


def report(result: Inspection) -> None:
    for path in result.written:
        print(path)
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s)", file=sys.stderr)


COMMAND = Command(Config, run, report)

"""`saev visuals`: each latent's top images as data and as a static HTML gallery."""

import sys

from saev.commands.base import Command
from saev.visuals import VisualsConfig, VisualsResult, make_visuals

Config = VisualsConfig


def report(result: VisualsResult) -> None:
    if result.n_missing_images:
        print(f"{result.n_missing_images} image(s) missing, drawn as placeholders", file=sys.stderr)
    print(result.index)


COMMAND = Command(Config, make_visuals, report, distributed=True)

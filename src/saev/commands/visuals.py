"""`saev visuals`: each latent's top images as data and as a static HTML gallery."""

import dataclasses
import pathlib
import sys
from typing import Annotated

import tyro

from saev.commands.base import Command
from saev.explorer.lens import lens_effects
from saev.steering import heads
from saev.visuals import VisualsConfig, VisualsResult, make_visuals


@dataclasses.dataclass(frozen=True)
class Config(VisualsConfig):
    """Find each latent's maximally activating images and build a static HTML gallery of them."""

    names: pathlib.Path | None = None
    """names.json of `saev label`: each latent's automatic name, on its card and page."""
    head: Annotated[
        tuple[str, ...],
        tyro.conf.arg(
            help="Heads whose logits each rendered latent's direction moves (a logit lens on its page): "
            f"{heads.describe()}."
        ),
    ] = ()


def run(cfg: Config) -> VisualsResult:
    # Latent names are read by saev.naming, which imports scikit-learn (1.8 s) through the scorecard's inputs.
    from saev.naming.names import read_naming

    names, naming = read_naming(cfg.names) if cfg.names is not None else (None, None)
    effects = lens_effects(cfg, cfg.head) if cfg.head else None
    return make_visuals(cfg, names=names, naming=naming, effects=effects)


def report(result: VisualsResult) -> None:
    if result.n_missing_images:
        print(f"{result.n_missing_images} image(s) missing, drawn as placeholders", file=sys.stderr)
    print(result.index)


COMMAND = Command(Config, run, report, distributed=True)

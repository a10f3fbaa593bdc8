"""The `saev` command: a thin layer that parses a config dataclass and calls the library function."""

import logging
import sys
from collections.abc import Callable
from typing import Any

import tyro

from saev.errors import SaevError


def _inspect(cfg: Any) -> None:
    from saev.inspect import inspect

    result = inspect(cfg)
    for path in result.written:
        print(path)
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s)", file=sys.stderr)


def _activations(cfg: Any) -> None:
    from saev.activations.recording import record

    result = record(cfg)
    if result.already_complete:
        print(f"store already complete, nothing to do: {result.path}", file=sys.stderr)
    print(result.path)


def _normalize(cfg: Any) -> None:
    from saev.data.normalization import normalize_checkpoint

    print(normalize_checkpoint(cfg))


def _train(cfg: Any) -> None:
    from saev.training.trainer import results_table, train

    results = train(cfg)
    print(results_table(results), file=sys.stderr)
    for result in results:
        print(result.checkpoint)


def _visuals(cfg: Any) -> None:
    from saev.visuals import make_visuals

    result = make_visuals(cfg)
    if result.n_missing_images:
        print(f"{result.n_missing_images} image(s) missing, drawn as placeholders", file=sys.stderr)
    print(result.index)


def _quickstart(cfg: Any) -> None:
    from saev.quickstart import print_report, quickstart

    result = quickstart(cfg)
    print_report(result)
    print(f"gallery: {result.gallery}")


def _commands() -> dict[str, tuple[type, Callable[[Any], None]]]:
    from saev.activations.recording import RecordConfig
    from saev.data.normalization import NormalizeConfig
    from saev.inspect import InspectConfig
    from saev.quickstart import QuickstartConfig
    from saev.training.config import TrainConfig
    from saev.visuals.build import VisualsConfig

    return {
        "activations": (RecordConfig, _activations),
        "inspect": (InspectConfig, _inspect),
        "normalize": (NormalizeConfig, _normalize),
        "quickstart": (QuickstartConfig, _quickstart),
        "train": (TrainConfig, _train),
        "visuals": (VisualsConfig, _visuals),
    }


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("saev").setLevel(logging.INFO)
    commands = _commands()
    cfg = tyro.extras.subcommand_cli_from_dict(
        {name: cfg_cls for name, (cfg_cls, _) in commands.items()},
        prog="saev",
        description="Sparse autoencoders for vision transformers.",
        args=argv,
    )
    run = next(fn for cfg_cls, fn in commands.values() if isinstance(cfg, cfg_cls))
    try:
        run(cfg)
    except SaevError as err:
        print(f"saev: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("saev: interrupted", file=sys.stderr)
        raise SystemExit(130) from None

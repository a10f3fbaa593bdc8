"""`saev train`: train SAEs on a store, many per pass over the data, and plot how they did."""

import dataclasses
import logging
import pathlib
import sys

from saev import distributed
from saev.commands.base import Command
from saev.nn import architectures
from saev.options import flag
from saev.training import RunResult, TrainConfig, plots, results_table, train

Config = TrainConfig
logger = logging.getLogger("saev.commands.train")


@dataclasses.dataclass(frozen=True)
class Result:
    runs: list[RunResult]
    curves: list[pathlib.Path]
    """Each run's curves.png (a run whose picture failed is left out, with a warning)."""
    frontier: pathlib.Path | None
    """OUT/sweep.png for a sweep with held-out metrics, else None."""


def run(cfg: Config) -> Result:
    results = train(cfg)
    if not distributed.current().main:
        return Result(results, [], None)  # under torchrun, rank 0 draws the pictures
    curves = plot_runs(results)
    try:
        frontier = plots.write_sweep_plot(results, cfg.out)
    except (OSError, ValueError) as err:
        logger.warning("no sweep plot (%s)", err)
        frontier = None
    return Result(results, curves, frontier)


def plot_runs(results: list[RunResult]) -> list[pathlib.Path]:
    """Each run's curves.png. The checkpoints are written by now: a picture that cannot be drawn
    is a warning, so that their paths are still printed."""
    curves = []
    for result in results:
        try:
            curves.append(plots.write_run_plots(result.path))
        except (OSError, ValueError) as err:
            logger.warning("%s: no training curves (%s)", result.run_id, err)
    return curves


def report(result: Result) -> None:
    err = sys.stderr
    print(results_table(result.runs), file=err)
    if result.curves:
        print("training curves:", file=err)
        for path in result.curves:
            print(f"  {path}", file=err)
    if result.frontier is not None:
        print(f"sparsity/fidelity frontier: {result.frontier}", file=err)
    for run_result in result.runs:
        print(run_result.checkpoint)  # stdout holds only the checkpoint paths, for scripts


COMMAND = Command(
    Config,
    run,
    report,
    description=f"{TrainConfig.__doc__}\n\nArchitectures and the options each reads (another's are refused): "
    + "; ".join(
        f"{name} ({', '.join(map(flag, architectures.option_names(name))) or 'none'})"
        for name in architectures.ARCHITECTURES
    )
    + ".",
    distributed=True,
    check_flags=TrainConfig.check_given,
)

"""`saev train`: train SAEs on a store, many per pass over the data."""

import sys

from saev.commands.base import Command
from saev.nn import architectures
from saev.training import RunResult, TrainConfig, results_table, train

Config = TrainConfig


def report(results: list[RunResult]) -> None:
    print(results_table(results), file=sys.stderr)
    for result in results:
        print(result.checkpoint)


COMMAND = Command(
    Config,
    train,
    report,
    description=f"{TrainConfig.__doc__}\n\nArchitectures: {', '.join(architectures.ARCHITECTURES)}.",
)

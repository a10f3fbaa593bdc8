"""The commands layer: one module per `saev` command, each with its config, run function, result
and report. It sits on top of the library, which never imports it (`make lint` checks this)."""

from saev.commands import (
    activations,
    bench,
    catalog,
    convert,
    evaluate,
    export,
    inspect_images,
    label,
    normalize,
    probe,
    quickstart,
    serve,
    steer,
    train,
    visuals,
)
from saev.commands.base import Command

COMMANDS: dict[str, Command] = {
    "activations": activations.COMMAND,
    "bench": bench.COMMAND,
    "catalog": catalog.COMMAND,
    "convert": convert.COMMAND,
    "evaluate": evaluate.COMMAND,
    "export": export.COMMAND,
    "inspect": inspect_images.COMMAND,
    "label": label.COMMAND,
    "normalize": normalize.COMMAND,
    "probe": probe.COMMAND,
    "quickstart": quickstart.COMMAND,
    "serve": serve.COMMAND,
    "steer": steer.COMMAND,
    "train": train.COMMAND,
    "visuals": visuals.COMMAND,
}

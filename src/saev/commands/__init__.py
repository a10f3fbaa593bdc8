"""The commands layer: one module per `saev` command, each with its config, run function, result
and report. It sits on top of the library, which never imports it (`make lint` checks this)."""

from saev.commands import activations, inspect_images, normalize, quickstart, train, visuals
from saev.commands.base import Command

COMMANDS: dict[str, Command] = {
    "activations": activations.COMMAND,
    "inspect": inspect_images.COMMAND,
    "normalize": normalize.COMMAND,
    "quickstart": quickstart.COMMAND,
    "train": train.COMMAND,
    "visuals": visuals.COMMAND,
}

"""`saev activations`: record a ViT's activations over an image source into a resumable store."""

import sys

from saev.activations import families
from saev.activations.recording import RecordConfig, RecordResult, record
from saev.commands.base import Command

Config = RecordConfig


def report(result: RecordResult) -> None:
    if result.already_complete:
        print(f"store already complete, nothing to do: {result.path}", file=sys.stderr)
    print(result.path)


COMMAND = Command(
    Config,
    record,
    report,
    description=f"{RecordConfig.__doc__}\n\nViT families:\n{families.describe()}",
    distributed=True,
)

"""What a `saev` command is: a config (its fields are the flags), a run function that calls the
library, and a report that prints the run's result."""

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Command:
    config: type
    """Frozen dataclass; its field docstrings are the flags' help."""
    run: Callable[[Any], Any]
    """config -> result; raises SaevError for bad input."""
    report: Callable[[Any], None]
    """Prints the result: paths a script would read on stdout, summaries on stderr."""
    description: str | None = None
    """The command's help text (default: the config's docstring)."""

"""The `saev` command: parse a command's config dataclass, run it, report its result."""

import logging
import sys
from typing import Annotated, Any, Union

import tyro

from saev.commands import COMMANDS
from saev.errors import SaevError


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("saev").setLevel(logging.INFO)
    choices = tuple(
        Annotated[Any, tyro.conf.subcommand(name, constructor=cmd.config, description=cmd.description)]
        for name, cmd in COMMANDS.items()
    )
    one_of = Union[choices]  # noqa: UP007 (a union built at run time)
    cfg = tyro.cli(one_of, prog="saev", description="Sparse autoencoders for vision transformers.", args=argv)
    command = next(cmd for cmd in COMMANDS.values() if isinstance(cfg, cmd.config))
    try:
        command.report(command.run(cfg))
    except SaevError as err:
        print(f"saev: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("saev: interrupted", file=sys.stderr)
        raise SystemExit(130) from None

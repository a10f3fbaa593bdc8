"""The `saev` command: parse a command's config dataclass, run it, report its result."""

import os

# Idle OpenMP threads must sleep, not spin, or a busy neighbour process slows every command
# tenfold (see saev.runtime); the runtime reads this once, when torch loads just below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Under torchrun only rank 0 draws progress bars (tqdm reads TQDM_* when it is imported). A RANK
# that is not a number is left to torch.distributed, which names it, rather than a traceback here.
if os.environ.get("RANK", "0").strip() not in ("", "0"):
    os.environ.setdefault("TQDM_DISABLE", "1")

import dataclasses  # noqa: E402
import errno  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from typing import Annotated, Any, NoReturn, Union  # noqa: E402

import torch  # noqa: E402
import tqdm  # noqa: E402
import tyro  # noqa: E402

import saev  # noqa: E402
from saev import distributed, runtime  # noqa: E402
from saev.commands import COMMANDS  # noqa: E402
from saev.commands.base import check_options  # noqa: E402
from saev.errors import SaevError  # noqa: E402

DESCRIPTION = (
    "Sparse autoencoders for vision transformers. Compute uses one thread per idle core; "
    f"set {runtime.ENV}=N to choose."
)


# OS errors that describe the user's files or machine rather than a bug in saev.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.EMFILE,
    errno.EIO,
    errno.ELOOP,
}


def _fail(message: str) -> NoReturn:
    # A progress bar interrupted by the error would leave the message on its line; closing it ends
    # the line. tqdm keeps its open bars in `_instances` (no public accessor).
    for bar in list(getattr(tqdm.tqdm, "_instances", ())):
        bar.close()
    print(f"saev: error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


def _reader_left() -> NoReturn:
    """The program reading saev's output (`| head`) closed the pipe: end quietly, with the status
    of a process killed by SIGPIPE, as other command-line tools do."""
    # Python would flush stdout again at exit and print a second BrokenPipeError.
    if sys.stdout is not None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(128 + signal.SIGPIPE)


def _join(name: str, command: Any, cfg: Any) -> tuple[Any, distributed.World]:
    """Join torchrun's process group for a command that runs distributed; the rank's config and world."""
    if not command.distributed:
        raise SaevError(
            f"saev {name} does not run under torchrun; run it as one process (distributed: "
            f"{', '.join(n for n, c in COMMANDS.items() if c.distributed)})."
        )
    world, device = distributed.setup(cfg.device)
    # Every rank must do the same work: options given to one rank only would split it silently.
    distributed.check_same(
        {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "device"}
    )
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(f"%(levelname)s rank {world.rank}: %(name)s: %(message)s"))
    return dataclasses.replace(cfg, device=device), world


def given_fields(args: list[str]) -> frozenset[str]:
    """The config fields named by the flags in `args` (`--no-x` names `x`)."""
    names = (a[2:].split("=", 1)[0].replace("-", "_") for a in args if a.startswith("--"))
    return frozenset(n.removeprefix("no_") if n.startswith("no_") else n for n in names)


def main(argv: list[str] | None = None) -> None:
    try:
        try:
            _main(argv)
        finally:
            if sys.stdout is not None:  # None when started with stdout closed (`>&-`)
                sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        _reader_left()


def _main(argv: list[str] | None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("saev").setLevel(logging.INFO)
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["--version"], ["-V"]):
        print(f"saev {saev.__version__}")
        return
    try:
        choice = runtime.system_choice()
    except SaevError as err:  # a bad SAEV_THREADS (runtime.ThreadsError)
        _fail(str(err))
    torch.set_num_threads(choice.threads)
    logging.getLogger("saev").debug("%d compute threads (%s)", choice.threads, choice.reason)
    choices = tuple(
        Annotated[Any, tyro.conf.subcommand(name, constructor=cmd.config, description=cmd.description)]
        for name, cmd in COMMANDS.items()
    )
    one_of: Any = Union[choices]  # noqa: UP007 (a union built at run time)
    cfg = tyro.cli(one_of, prog="saev", description=DESCRIPTION, args=args)
    name, command = next((n, cmd) for n, cmd in COMMANDS.items() if isinstance(cfg, cmd.config))
    world = distributed.World()
    try:
        check_options(cfg)
        if command.check_flags is not None:
            command.check_flags(cfg, given_fields(args))
        if distributed.launched():
            cfg, world = _join(name, command, cfg)
        result = command.run(cfg)
        if world.main:
            command.report(result)
        distributed.teardown()
    except SaevError as err:
        _fail(world.prefix() + str(err))
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRNOS:
            raise
        # A full disk or a read-only folder is the machine's state, not a bug: name the file.
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        hint = " Files written before are whole (writes are atomic): make room and rerun; recordings and trainings resume."
        _fail(f"{err.filename or 'writing output'}: {err.strerror}.{hint if full else ''}")
    except RuntimeError as err:
        # pathlib's resolve() (before Python 3.13) reports a symbolic link to itself this way.
        if not str(err).startswith("Symlink loop from"):
            raise
        _fail(f"{str(err).removeprefix('Symlink loop from ')}: a symbolic link that leads back to itself.")
    except (MemoryError, torch.OutOfMemoryError):
        _fail("out of memory; try a smaller --batch-size (or --exp-factor for training).")
    except KeyboardInterrupt:
        print("saev: interrupted", file=sys.stderr)
        raise SystemExit(130) from None

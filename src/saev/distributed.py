"""Running as one of several processes started by `torchrun`: the environment, the process group, and
the few collective steps saev needs.

Commands call `setup()` once: outside torchrun it returns a one-process `World` and nothing else
changes. Under torchrun it joins the process group (Gloo on CPUs, NCCL on GPUs, each process on
GPU `LOCAL_RANK`) with a timeout, so a rank that stops answering ends the job with a message rather
than a hang; torchrun itself stops every rank when one exits.
"""

import collections
import contextlib
import dataclasses
import datetime
import json
import os
import pickle
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from saev.errors import ConfigError, DistributedError

TIMEOUT_ENV = "SAEV_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
"""How long a collective of the work itself (a training step's all-reduce) waits for the other ranks,
in seconds: a rank that takes this long to join one is stuck."""
PATIENCE = datetime.timedelta(days=7)
"""How long a rank that finished its share waits for the others (`patient=True`): as long as their
remaining work, which may be hours (a resumed recording's unfinished parts). A rank that dies still
ends the job at once: torchrun stops the others."""
_patient = None
"""A Gloo group over every rank with the `PATIENCE` timeout."""


@dataclasses.dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes shared files and shows progress."""
        return self.rank == 0

    def share(self, n: int) -> range:
        """This rank's contiguous part of `range(n)`: the first `n % size` ranks get one more."""
        return split(n, self.size)[self.rank]

    def prefix(self) -> str:
        return f"rank {self.rank} of {self.size}: " if self.distributed else ""


def split(n: int, parts: int, align: int = 1) -> list[range]:
    """`range(n)` cut into `parts` contiguous ranges, as equal as possible in units of `align` items."""
    units = -(-n // align)
    bounds = [min(n, (units * p // parts) * align) for p in range(parts + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_alone = False

traffic: collections.Counter = collections.Counter()
"""Bytes this process has sent into each kind of collective ('all_reduce', 'all_gather', 'gather'
(pickled objects), by payload size), for measuring communication (benchmarks/distributed.py)."""


def current() -> World:
    """The world this process belongs to, from torchrun's environment (one process without it, or
    inside `alone()`)."""
    return World() if _alone else rank()


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Work that this rank does on its own (its runs of a sweep, rank 0's evaluation): every
    collective below becomes a no-op and `current()` a one-process world."""
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


def rank() -> World:
    """This process's place among torchrun's processes, even inside `alone()`."""
    if not dist.is_available() or not dist.is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def timeout() -> datetime.timedelta:
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{TIMEOUT_ENV}={value!r}: expected a positive number of seconds.")
    return datetime.timedelta(seconds=seconds)


def setup(device: str) -> tuple[World, str]:
    """Join torchrun's process group if launched by it; returns the world and this rank's device
    (`cuda` becomes `cuda:LOCAL_RANK`)."""
    if not launched():
        return World(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        if torch.device(device).index is not None:
            raise ConfigError(
                f"--device {device}: under torchrun each process uses GPU LOCAL_RANK; pass --device cuda."
            )
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    global _patient
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_gpu else "gloo", timeout=timeout())
        _patient = dist.new_group(backend="gloo", timeout=PATIENCE)
    return current(), device


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """A failed collective means another rank is gone: say so in one line instead of Gloo's or NCCL's traceback."""
    try:
        yield
    except (RuntimeError, dist.DistError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedError(
            f"lost contact with the other processes during {what}: another rank stopped (its error is above) "
            f"or did not answer in time ({TIMEOUT_ENV}={timeout().total_seconds():g} s). ({first[:200]})"
        ) from None


def teardown() -> None:
    global _patient
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _patient = None


def gather(obj: Any, patient: bool = False) -> list[Any]:
    """Every rank's `obj` (picklable; from saev's own processes), in rank order. `patient`: the ranks
    arrive when they finish their shares of the work, however long apart (see `PATIENCE`)."""
    world = current()
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    traffic["gather"] += len(pickle.dumps(obj))
    with _collective("a gather"):
        dist.all_gather_object(out, obj, group=_patient if patient else None)
    return out


def barrier(patient: bool = False) -> None:
    """Wait for every rank; `patient` as for `gather`."""
    if current().distributed:
        with _collective("a barrier"):
            dist.barrier(group=_patient if patient else None)


def check_same(options: dict[str, Any], what: str = "options") -> None:
    """Refuse to start when the ranks were given different options (a launcher script's mistake that
    would otherwise surface as a hang or as silently different work)."""
    mine = json.dumps(options, sort_keys=True, default=str)
    everyone = gather(mine)
    if all(other == mine for other in everyone):
        return
    theirs = [json.loads(o) for o in everyone]
    keys = sorted(
        {k for o in theirs for k in o if len({json.dumps(t.get(k), default=str) for t in theirs}) > 1}
    )
    detail = "; ".join(
        f"{k}: " + ", ".join(f"rank {r} {t.get(k)!r}" for r, t in enumerate(theirs)) for k in keys
    )
    raise ConfigError(
        f"the {len(theirs)} ranks were given different {what} ({detail}); give every rank the same."
    )


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """`tensor` reduced in place over all ranks (`sum`, `max` or `min`); unchanged in one process."""
    if current().distributed:
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        traffic["all_reduce"] += tensor.numel() * tensor.element_size()
        with _collective("an all-reduce"):
            dist.all_reduce(tensor, op=ops[op])
    return tensor


def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `tensor` (same shape on every rank), in rank order."""
    world = current()
    if not world.distributed:
        return [tensor]
    out = [torch.empty_like(tensor) for _ in range(world.size)]
    traffic["all_gather"] += tensor.numel() * tensor.element_size()
    with _collective("an all-gather"):
        dist.all_gather(out, tensor.contiguous())
    return out

"""Running as one of several processes started by `torchrun`: the environment, the process group, and
the few collective steps saev needs.

Commands call `setup()` once: outside torchrun it returns a one-process `World` and nothing else
changes. Under torchrun it joins the process group (Gloo on CPUs, NCCL on GPUs, each process on
GPU `LOCAL_RANK`) with a timeout, so a rank that stops answering ends the job with a message rather
than a hang; torchrun itself stops every rank when one exits.

A rank that is stopped rather than dead (suspended, a hung GPU, a frozen file system) would hold the
others for the whole timeout, or for `PATIENCE` in waits that may legitimately last hours. So each rank
also runs a heartbeat thread (`_Heartbeat`) that publishes its progress in torchrun's key-value store
and watches the others': a rank waiting for the others ends the job once one of them has stood still
for `SAEV_DIST_STALL` seconds, while a slower rank that keeps calling `progress()` is waited for.
"""

import collections
import contextlib
import dataclasses
import datetime
import json
import os
import pickle
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal, NoReturn

import torch
import torch.distributed as dist
import tqdm

from saev.errors import ConfigError, DistributedError

TIMEOUT_ENV = "SAEV_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
"""How long a collective of the work itself (a training step's all-reduce) waits for the other ranks,
in seconds: a rank that takes this long to join one is stuck."""
PATIENCE = datetime.timedelta(days=7)
"""How long a rank that finished its share waits for the others (`patient=True`): as long as their
remaining work, which may be hours (a resumed recording's unfinished parts). A rank that dies still
ends the job at once: torchrun stops the others."""
_patient: dist.ProcessGroup | None = None
"""A Gloo group over every rank with the `PATIENCE` timeout."""
STALL_ENV = "SAEV_DIST_STALL"
DEFAULT_STALL_S = 300.0
"""How long a rank may stand still (no `progress()` while working, or no heartbeat at all) before a
rank waiting for it ends the job, in seconds."""
BEATS_PER_STALL = 10
"""Heartbeats per `SAEV_DIST_STALL` window: a live rank is never judged frozen for a few late beats."""
MAX_BEAT_S = 10.0
"""At most this long between heartbeats: every rank reads every rank's record once per beat."""


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


def _seconds(env: str, default: float) -> float:
    value = os.environ.get(env, "").strip()
    try:
        seconds = float(value) if value else default
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{env}={value!r}: expected a positive number of seconds.")
    return seconds


def timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


def stall() -> float:
    """`SAEV_DIST_STALL` in seconds (see `DEFAULT_STALL_S`)."""
    return _seconds(STALL_ENV, DEFAULT_STALL_S)


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
    global _patient, _heartbeat
    if not dist.is_initialized():
        limit = stall()
        dist.init_process_group("nccl" if on_gpu else "gloo", timeout=timeout())
        # Typed as possibly NON_GROUP_MEMBER, which only a rank left out of `ranks` gets: all join here.
        _patient = dist.new_group(backend="gloo", timeout=PATIENCE)  # type: ignore[assignment]
        _heartbeat = _Heartbeat(rank(), limit)
        _heartbeat.start()
    return current(), device


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """A failed collective means another rank is gone: say so in one line instead of Gloo's or NCCL's
    traceback. Meanwhile the heartbeat says this rank waits, and watches for a peer that stands still."""
    global _waiting
    _waiting = what
    try:
        yield
    except (RuntimeError, dist.DistError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedError(
            f"lost contact with the other processes during {what}: another rank stopped (its error is above) "
            f"or did not answer in time ({TIMEOUT_ENV}={timeout().total_seconds():g} s). ({first[:200]})"
        ) from None
    finally:
        _waiting = None


def teardown() -> None:
    global _patient, _heartbeat
    if _heartbeat is not None:
        _heartbeat.finish()
        _heartbeat = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _patient = None


# Stall detection: progress and heartbeats.

_progress = 0
"""`progress()` calls so far."""
_waiting: str | None = None
"""The collective this rank is waiting in (`_collective`), if any."""
_heartbeat: "_Heartbeat | None" = None


def progress() -> None:
    """Note a step of work done (a batch, a chunk). Every loop that can run for long while another
    rank waits for this one calls it, so that slow work is told from stuck work (`SAEV_DIST_STALL`).
    Costs an integer increment, with or without torchrun."""
    global _progress
    _progress += 1


State = Literal["working", "waiting", "done"]


@dataclasses.dataclass(frozen=True)
class Beat:
    """What a rank publishes at every heartbeat."""

    count: int
    """Heartbeats so far: it stands still only when the process is not running at all."""
    progress: int
    """`progress()` calls so far: it stands still when the work is stuck (or in a collective)."""
    state: State
    """`waiting` inside a collective: the others owe it progress, not the reverse."""

    def encode(self) -> str:
        return f"{self.count} {self.progress} {self.state}"

    @staticmethod
    def decode(raw: bytes) -> "Beat":
        count, done, state = raw.decode().split()
        return Beat(int(count), int(done), state)  # type: ignore[arg-type]  # written by `encode`


@dataclasses.dataclass(frozen=True)
class Watch:
    """A rank as another has seen it: its last beat, and since when (on the watcher's monotonic clock)
    its heartbeat and its work have stood still. Only the watcher's own clock is compared, so the
    ranks' clocks need not agree."""

    beat: Beat | None
    alive_since: float
    """Since when `beat.count` has not changed."""
    busy_since: float
    """Since when `beat.progress` and `beat.state` have not changed."""

    def see(self, beat: Beat | None, now: float) -> "Watch":
        """After reading `beat` at `now`; None when it could not be read (no news: nothing moved)."""
        if beat is None:
            return self
        old = self.beat
        same_count = old is not None and old.count == beat.count
        same_work = old is not None and (old.progress, old.state) == (beat.progress, beat.state)
        return Watch(beat, self.alive_since if same_count else now, self.busy_since if same_work else now)


@dataclasses.dataclass(frozen=True)
class Stall:
    rank: int
    seconds: float
    frozen: bool
    """Its heartbeat stopped: the process is not running. Otherwise it runs but its work is stuck."""


def find_stall(me: Watch, waiting: bool, peers: dict[int, Watch], now: float, limit: float) -> Stall | None:
    """The peer this rank must give up on, if any.

    A peer stands still when its heartbeat has not moved for `limit` seconds (frozen: stopped, or its
    machine froze) or when it is working and its progress has not moved for as long (a hung GPU, a
    frozen file system). A peer that waits in a collective is not working, and a finished one has
    stopped beating on purpose. Its progress counts from its first step of work: before that it
    imports, loads a model or lists images, single calls as long on one rank as on another, and
    faster ranks wait for it (bounded by SAEV_DIST_TIMEOUT or PATIENCE, as before).

    This rank gives up only while it waits for the others itself (ranks ahead of a slow one wait
    for it), or, for a frozen peer, when its own work has stood still as long: a GPU rank blocked on
    an NCCL all-reduce that a frozen peer never joins."""
    blocked = not waiting and now - me.busy_since >= limit
    if not waiting and not blocked:
        return None
    for rank, peer in sorted(peers.items()):
        state = peer.beat.state if peer.beat is not None else "working"
        if state == "done":
            continue
        silent = now - peer.alive_since
        if silent >= limit:
            return Stall(rank, silent, frozen=True)
        started = peer.beat is not None and peer.beat.progress > 0
        # A late heartbeat may be a frozen process, whose progress stopped no later: the rule above
        # tells, `limit` after its last beat.
        late = silent >= limit / 3
        if waiting and state == "working" and started and not late and now - peer.busy_since >= limit:
            return Stall(rank, now - peer.busy_since, frozen=False)
    return None


def stall_message(world: World, what: str | None, found: Stall, limit: float) -> str:
    """The line a rank that gives up prints, as `saev.cli` prints a DistributedError."""
    during = f" during {what}" if what is not None else ""
    why = (
        "its process is not running (suspended, or its machine froze)"
        if found.frozen
        else "it is running but its work is stuck (a hung GPU or a frozen file system?)"
    )
    return (
        f"saev: error: {world.prefix()}lost contact with the other processes{during}: rank {found.rank} has "
        f"made no progress for {found.seconds:.0f} s ({STALL_ENV}={limit:g} s): {why}."
    )


class _Heartbeat(threading.Thread):
    """Publishes this rank's `Beat` in torchrun's key-value store and watches the others' (see `find_stall`).

    Its own connection to the store (MASTER_ADDR:MASTER_PORT, as `init_process_group` used), since a
    store client is not shared between threads. A daemon: it never keeps a finished process alive."""

    def __init__(self, world: World, limit: float):
        super().__init__(name="saev-heartbeat", daemon=True)
        self.world, self.limit = world, limit
        self.period = min(MAX_BEAT_S, limit / BEATS_PER_STALL)
        self.keys = [f"saev/heartbeat/{r}" for r in range(world.size)]
        self.count = 0
        self.stop = threading.Event()
        with _collective("the start"):
            self.store = dist.TCPStore(
                os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]),
                is_master=False,
                timeout=timeout(),
                wait_for_workers=False,
            )
            self.publish(self.beat("working"))
            # Every rank's record exists before any is read: reading a missing key would block.
            self.store.wait(self.keys)
        # From now on a store that does not answer within a beat is no news (it may live in a frozen rank 0).
        self.store.set_timeout(datetime.timedelta(seconds=max(1.0, self.period)))

    def beat(self, state: State) -> Beat:
        self.count += 1
        return Beat(self.count, _progress, state)

    def publish(self, beat: Beat) -> None:
        self.store.set(self.keys[self.world.rank], beat.encode())

    def run(self) -> None:
        start = time.monotonic()
        me = Watch(None, start, start)
        peers = {r: Watch(None, start, start) for r in range(self.world.size) if r != self.world.rank}
        keys = [self.keys[r] for r in peers]
        while not self.stop.wait(self.period):
            waiting = _waiting
            mine = self.beat("working" if waiting is None else "waiting")
            try:
                self.publish(mine)
                raw: list[bytes | None] = list(self.store.multi_get(keys))
            except RuntimeError:  # the store did not answer within a beat: no news of the others
                raw = [None] * len(keys)
            now = time.monotonic()
            me = me.see(mine, now)
            peers = {
                r: w.see(None if b is None else Beat.decode(b), now)
                for (r, w), b in zip(peers.items(), raw, strict=True)
            }
            found = find_stall(me, waiting is not None, peers, now, self.limit)
            # Unless the collective ended (or another began) while the store was read: judge again.
            if found is not None and _waiting == waiting:
                self.give_up(stall_message(self.world, waiting, found, self.limit))
        with contextlib.suppress(RuntimeError):
            self.publish(self.beat("done"))

    def give_up(self, message: str) -> NoReturn:
        # The main thread is blocked inside Gloo or on the GPU, where no exception can reach it: end
        # the process, and torchrun ends the others. Close progress bars first, as saev.cli does; the
        # other ranks share this stderr and one of them (the lost one) may have left a bar mid-line,
        # so the message starts a line of its own.
        try:
            for bar in list(getattr(tqdm.tqdm, "_instances", ())):
                bar.close()
            print(f"\n{message}", file=sys.stderr, flush=True)
        finally:
            os._exit(2)

    def finish(self) -> None:
        """Say this rank is done (the others stop watching it) and stop."""
        self.stop.set()
        self.join(timeout=4 * max(1.0, self.period))


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

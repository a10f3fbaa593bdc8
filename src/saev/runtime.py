"""How many CPU threads saev's compute uses.

torch starts one OpenMP thread per core and, by default, lets idle threads spin. When another
process shares the cores, spinning threads fight it for them and a 2-core run slows down tenfold
(measured: 1,900 tokens/s of SAE training against 20,500 with one thread). So the CLI asks the
OpenMP runtime to sleep rather than spin (`OMP_WAIT_POLICY=PASSIVE`, set before torch loads) and
starts as many threads as there are cores not already busy, by the 1-minute load average, unless
`SAEV_THREADS` says otherwise.
"""

import dataclasses
import os

from saev.errors import ConfigError

ENV = "SAEV_THREADS"
# More threads than this is a typo, not a machine: torch would accept up to 2**31 - 1 and then try
# to start them all (and a bigger number overflows inside torch, with a traceback).
MAX_THREADS = 1024


class ThreadsError(ConfigError, ValueError):
    """`SAEV_THREADS` (or torchrun's `LOCAL_WORLD_SIZE`) is not a usable number; the CLI reports it as
    `saev: error: ...`. Also a ValueError, as before, for code that catches that."""


def _whole(value: str) -> int | None:
    """The value as a whole number when it is written with ASCII digits only, else None."""
    return int(value) if value.isascii() and value.isdigit() else None


@dataclasses.dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str


def choose_threads(env: dict[str, str], cores: int, load: float) -> ThreadChoice:
    """`SAEV_THREADS` when set; otherwise the cores minus the (rounded) load of other processes, at least one."""
    value = env.get(ENV, "").strip()
    if value:
        threads = _whole(value)
        if threads is None or not 1 <= threads <= MAX_THREADS:
            raise ThreadsError(
                f"{ENV}={value!r}: expected a whole number of threads from 1 to {MAX_THREADS} (this "
                f"machine has {cores} cores); unset it to follow the load."
            )
        return ThreadChoice(threads, f"{ENV}={value}")
    # torchrun's processes on one machine share its cores.
    local_value = env.get("LOCAL_WORLD_SIZE", "").strip()
    local = _whole(local_value or "1")
    if local is None:
        raise ThreadsError(
            f"LOCAL_WORLD_SIZE={local_value!r}: expected a whole number of processes on this machine "
            f"(torchrun sets it); or set {ENV}=N to choose the threads yourself."
        )
    local = max(1, local)
    free = max(1, (cores - round(load)) // local)
    per = f", {local} processes" if local > 1 else ""
    return ThreadChoice(free, f"{cores} cores, load average {load:.1f}{per}")


def system_choice() -> ThreadChoice:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return choose_threads(dict(os.environ), cores, load)

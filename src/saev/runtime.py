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

ENV = "SAEV_THREADS"


@dataclasses.dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str


def choose_threads(env: dict[str, str], cores: int, load: float) -> ThreadChoice:
    """`SAEV_THREADS` when set; otherwise the cores minus the (rounded) load of other processes, at least one."""
    value = env.get(ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{ENV}={value!r}: expected a positive number of threads.")
        return ThreadChoice(int(value), f"{ENV}={value}")
    # torchrun's processes on one machine share its cores.
    local = max(1, int(env.get("LOCAL_WORLD_SIZE", "1") or 1))
    free = max(1, (cores - round(load)) // local)
    per = f", {local} processes" if local > 1 else ""
    return ThreadChoice(free, f"{cores} cores, load average {load:.1f}{per}")


def system_choice() -> ThreadChoice:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return choose_threads(dict(os.environ), cores, load)

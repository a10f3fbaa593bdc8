"""Run a saev command (or a launcher script) under `torchrun --standalone` (Gloo on CPU) from a test."""

import os
import subprocess
import sys
import time
from collections.abc import Callable

TIMEOUT_S = 300
ENV = {"OMP_NUM_THREADS": "1", "SAEV_THREADS": "1"}


def command(args: list[str], nproc: int = 2, script: str | None = None) -> list[str]:
    """`torchrun --standalone --nproc-per-node NPROC -m saev ARGS`, or `... SCRIPT` when given one."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return cmd + ([script] if script is not None else ["-m", "saev", *args])


def torchrun(
    args: list[str],
    nproc: int = 2,
    env: dict[str, str] | None = None,
    check: bool = True,
    script: str | None = None,
) -> subprocess.CompletedProcess:
    """The finished torchrun process (output captured); raises with its stderr if `check` and it failed."""
    full_env = os.environ | ENV | (env or {})
    result = subprocess.run(
        command(args, nproc, script), capture_output=True, text=True, env=full_env, timeout=TIMEOUT_S
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"torchrun {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result


def kill_when(args: list[str], ready: Callable[[], bool], timeout: float = 120) -> bool:
    """Start `torchrun ... -m saev ARGS`, and once `ready()` holds, kill both ranks at once (a node
    lost), then the launcher. Returns whether `ready()` held before the timeout."""
    proc = subprocess.Popen(
        command(args), env=os.environ | ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout
    while not (done := ready()) and time.time() < deadline:
        time.sleep(0.01)
    subprocess.run(["pkill", "-KILL", "-P", str(proc.pid)], check=False)
    proc.kill()
    proc.wait()
    time.sleep(0.5)
    return done

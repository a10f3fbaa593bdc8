"""Run a saev command under `torchrun --standalone` (Gloo on CPU) from a test."""

import os
import subprocess
import sys

TIMEOUT_S = 300


def torchrun(args: list[str], nproc: int = 2, env: dict[str, str] | None = None, check: bool = True):
    """`torchrun --standalone --nproc-per-node NPROC -m saev ARGS`; the finished process (output captured)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "saev", *args]
    full_env = os.environ | {"OMP_NUM_THREADS": "1", "SAEV_THREADS": "1"} | (env or {})
    result = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=TIMEOUT_S)
    if check and result.returncode != 0:
        raise AssertionError(
            f"torchrun {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result

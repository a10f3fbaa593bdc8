"""SAE training throughput with and without another busy process on the cores (issue 13).

Each configuration runs in its own Python process, because the OpenMP wait policy is read once,
when torch loads. Configurations:

- `torch default`: what saev did before, torch's own thread count (one per core) and OpenMP's
  default spin-waiting;
- `saev default`: the CLI's choice, `OMP_WAIT_POLICY=PASSIVE` and one thread per idle core
  (`saev.runtime.system_choice`);
- `1 thread`: for reference.

Each is measured idle and with one `while True: pass` process running. With `--quickstart`, also
times `saev quickstart` idle and busy with saev's defaults (about two minutes each).

    python -m benchmarks.threads [--seconds 8] [--quickstart]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import table

# Runs in a child process; prints tokens/s. The SAE and batch are the quickstart's size.
PROBE = """
import os, sys, time
if sys.argv[1] == "saev":
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
import torch
from saev import runtime
if sys.argv[1] == "saev":
    torch.set_num_threads(runtime.system_choice().threads)
elif sys.argv[1] == "one":
    torch.set_num_threads(1)
import saev.nn
from saev.nn.objectives import Objective, training_loss
sae = saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=128, d_sae=1024, activation=saev.nn.TopK(k=16)))
opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
x = torch.randn(1024, 128)
def step():
    out = training_loss(sae, x, 0.0, None, Objective())
    opt.zero_grad(); out.loss.backward(); opt.step()
for _ in range(5):
    step()
start, n = time.perf_counter(), 0
while time.perf_counter() - start < float(sys.argv[2]):
    step(); n += 1
print(torch.get_num_threads(), n * x.shape[0] / (time.perf_counter() - start))
"""

CONFIGS = {"torch default": "torch", "saev default": "saev", "1 thread": "one"}


class Busy:
    """One process spinning on a core for the duration of a `with` block."""

    def __enter__(self) -> "Busy":
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(20)  # let the 1-minute load average see it, as it would on a shared machine
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def probe(config: str, seconds: float) -> tuple[int, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "SAEV_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, config, str(seconds)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), float(out[1])


def quickstart_seconds() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "saev", "quickstart", "--out", str(Path(tmp) / "qs")],
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per configuration")
    parser.add_argument("--quickstart", action="store_true", help="also time saev quickstart idle and busy")
    args = parser.parse_args()

    print(f"{len(os.sched_getaffinity(0))} cores\n")
    idle = {name: probe(cfg, args.seconds) for name, cfg in CONFIGS.items()}
    with Busy():
        busy = {name: probe(cfg, args.seconds) for name, cfg in CONFIGS.items()}
    base = busy["torch default"][1]
    rows = [
        [
            name,
            idle[name][0],
            f"{idle[name][1]:,.0f}",
            busy[name][0],
            f"{busy[name][1]:,.0f}",
            busy[name][1] / base,
        ]
        for name in CONFIGS
    ]
    headers = [
        "configuration",
        "threads idle",
        "tok/s idle",
        "threads busy",
        "tok/s busy",
        "busy vs torch default",
    ]
    print(table(headers, rows))

    if args.quickstart:
        t_idle = quickstart_seconds()
        with Busy():
            t_busy = quickstart_seconds()
        print()
        print(
            table(
                ["saev quickstart", "idle s", "busy s", "busy / idle"],
                [["saev defaults", t_idle, t_busy, t_busy / t_idle]],
            )
        )


if __name__ == "__main__":
    main()

"""Start-up cost of the `saev` command and of the libraries it imports only when needed.

    python -m benchmarks.startup [--repeats 5]

Each line is a fresh Python process, timed from start to exit, interleaved with the baseline (a
process that only imports torch, which every command needs) so machine noise hits all alike. The
libraries listed are imported inside functions in saev (see docs/architecture.md): their rows are
what a command that never uses them would pay if they were imported at the top.
"""

import argparse
import subprocess
import sys

from benchmarks.common import interleaved_medians, table

LAZY = ("open_clip", "timm", "torchvision.transforms.v2", "transformers", "matplotlib", "datasets")


def process(code: str):
    return lambda: subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs = {
        "import torch (baseline)": process("import torch"),
        "saev --help": process(
            "import sys; from saev.cli import main; sys.argv = ['saev', '--help'];\ntry: main()\nexcept SystemExit: pass"
        ),
        "saev train --help": process(
            "import sys; from saev.cli import main; sys.argv = ['saev', 'train', '--help'];\ntry: main()\nexcept SystemExit: pass"
        ),
    }
    for name in LAZY:
        runs[f"import torch, {name}"] = process(f"import torch, {name}")
    seconds = interleaved_medians(runs, repeats=args.repeats, warmup=1)
    base = seconds["import torch (baseline)"]
    rows = [[name, s, s / base, s - base] for name, s in seconds.items()]
    print(table(["process", "median s", "ratio to baseline", "extra s"], rows))


if __name__ == "__main__":
    main()

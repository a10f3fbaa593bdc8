"""Shared timing helpers for the benchmarks: medians of repeated runs, printed as Markdown tables."""

import pathlib
import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int = 15, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int = 15, warmup: int = 2
) -> dict[str, float]:
    """Median time of each function, alternating between them so machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def table(headers: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def quickstart_output(folder: pathlib.Path) -> tuple[str, str]:
    """The SAE and store of a `saev quickstart` output folder, running the quickstart there first
    when it has no report.json."""
    from saev.fileio import read_json

    if not (folder / "report.json").is_file():
        import saev.cli

        print(f"{folder / 'report.json'} missing: running saev quickstart --out {folder}", flush=True)
        saev.cli.main(["quickstart", "--out", str(folder)])
    report = read_json(folder / "report.json", "quickstart report", ValueError)
    return str(report["sae"]), str(report["store"])

"""One process of `benchmarks/distributed.py`: what `saev activations` and `saev train` run, timed inside
the process.

Started either as one plain process or under `torchrun --standalone` (any number of processes). It
joins the process group and picks its threads as the `saev` command does (`distributed.setup`,
`SAEV_THREADS`, sleeping OpenMP threads), then times each call of `record(RecordConfig)` or
`train(TrainConfig)` between two barriers, so Python's start-up and torchrun's rendezvous are left
out. Every rank writes $BENCH_REPORTS/rank{RANK}.json: its rank, the world size, its threads, and per
task the timed calls, each with its seconds and the bytes this rank sent into each kind of collective
meanwhile (`saev.distributed.traffic`).

    python -m benchmarks.distributed_worker '[TASK, ...]'

A task is {"record": {"images": ..., "dump_to": ..., "n_patches_per_shard": ...}} (the built-in ViT,
`n_workers` 0), or {"train": {TrainConfig keys...}, "out": DIR, "steps": [N, ...]}: the configuration
trained once per entry of steps (n_train = steps x batch size), each into a fresh folder under DIR, in
that order.
"""

import os

# As the `saev` command does before torch loads (see saev.cli): idle OpenMP threads sleep.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402

from saev import distributed, runtime  # noqa: E402

REPORTS = "BENCH_REPORTS"
"""The folder where each rank writes its report, rank{RANK}.json."""


def timed(fn: Callable[[], object]) -> dict:
    """Seconds of `fn` between barriers, and the bytes this rank sent into collectives meanwhile."""
    distributed.barrier()
    before = distributed.traffic.copy()
    start = time.perf_counter()
    fn()
    distributed.barrier()
    seconds = time.perf_counter() - start
    sent = distributed.traffic.copy()
    sent.subtract(before)
    return {"seconds": seconds, "traffic": dict(sent)}


def record_task(images: str, dump_to: str, n_patches_per_shard: int) -> list[dict]:
    from saev.activations import make_img_transform
    from saev.activations.recording import RecordConfig, record

    make_img_transform("builtin", "shapes-vit")  # imports torchvision (~2 s): start-up, not recording
    cfg = RecordConfig(
        vit_family="builtin",
        vit_ckpt="shapes-vit",
        images=images,
        dump_to=pathlib.Path(dump_to),
        n_patches_per_shard=n_patches_per_shard,
        n_workers=0,
    )
    return [timed(lambda: record(cfg))]


def train_task(settings: dict, out: str, steps: list[int]) -> list[dict]:
    from saev.training import TrainConfig, train

    settings = settings | {k: pathlib.Path(settings[k]) for k in ("shards", "sweep") if settings.get(k)}
    calls = []
    for i, n in enumerate(steps):
        run_out = pathlib.Path(out) / f"{i}-{n}"
        cfg = TrainConfig(**settings | {"out": run_out, "n_train": n * settings["batch_size"]})
        calls.append({"steps": n} | timed(lambda cfg=cfg: train(cfg)))
    return calls


def main() -> None:
    choice = runtime.system_choice()
    torch.set_num_threads(choice.threads)
    world, _ = distributed.setup("cpu")
    tasks = []
    for task in json.loads(sys.argv[1]):
        if "record" in task:
            tasks.append(record_task(**task["record"]))
        else:
            tasks.append(train_task(task["train"], task["out"], task["steps"]))
    report = {"rank": world.rank, "size": world.size, "threads": torch.get_num_threads(), "tasks": tasks}
    (pathlib.Path(os.environ[REPORTS]) / f"rank{world.rank}.json").write_text(json.dumps(report))
    distributed.teardown()


if __name__ == "__main__":
    main()

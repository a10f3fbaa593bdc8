"""Scaling out with torchrun (issue 16): one process against two (`torchrun --standalone`, Gloo) on the same
cores, and the communication a data-parallel training step needs.

Every case runs in real processes (`benchmarks/distributed_worker.py`: it joins the process group and
picks its threads as the `saev` command does, then calls what the command calls, timed between
barriers inside the processes) in three configurations, interleaved over the repeats:

- 1 process x 1 thread (`SAEV_THREADS=1`),
- 1 process x 2 threads (`SAEV_THREADS=2`): all of this machine's cores in one process,
- 2 processes x 1 thread (`torchrun --standalone --nproc-per-node 2`, `SAEV_THREADS=1`): the same cores.

Cases, all in one launch per configuration and repeat:

1. recording (`saev activations`): the built-in ViT over synthetic 128 px images, `--n-workers 0`, with
   shards small enough that each rank gets half of them (a rank records whole shards);
2. training (`saev train`): TopK, k 32, 16x on a d_vit 64 store, batch 4,096, `--split batch` under
   torchrun; and a 4-run sweep (k x lr), `--split runs` under torchrun, against the same sweep trained in
   one pass by one process. Throughput comes from the difference between a long and a short run in the
   same process (start-up, statistics, evaluation and checkpoints cancel), after a warm-up run;
3. communication: `saev.distributed.traffic` (bytes each rank sent into collectives) per training step;
   a check that the bytes of whole runs equal the sizes of the collectives the code makes (with AuxK and
   BatchTopK's batch-wide selection running every step); and a projection for ViT-B/16 at 16x on GPUs
   that scales the measured bytes per step.

    .venv/bin/python -m benchmarks.distributed [--repeats 3] [--n-imgs 600]
"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import table

REPO = pathlib.Path(__file__).resolve().parent.parent
WORKER = "benchmarks.distributed_worker"
REPORTS = "BENCH_REPORTS"  # where the worker's ranks write their reports (see distributed_worker)
CONFIGS = {  # name: (processes, threads per process)
    "1 proc x 1 thread": (1, 1),
    "1 proc x 2 threads": (1, 2),
    "2 procs x 1 thread": (2, 1),
}
D_VIT, EXP, K, BATCH = 64, 16, 32, 4096
D_SAE = D_VIT * EXP
VIT_TOKENS = 65  # the built-in ViT at 128 px: [CLS] + 8 x 8 patches, one recorded layer
SWEEP = {"k": [16, 32], "lr": [1e-3, 3e-3]}
N_RUNS = 4
CASES = {"recording": "img/s", "training, --split batch": "tok/s", "4-run sweep, --split runs": "SAE tok/s"}
KINDS = ("all_reduce", "all_gather", "gather")
CHECK_BATCH, CHECK_K = 512, 4
CHECK = f"batch {CHECK_BATCH}, k {CHECK_K}, AuxK + metrics every step"

# The projection for ViT-B/16 at 16x: stated assumptions, not measurements.
PROJ_D_VIT, PROJ_EXP, PROJ_BATCH, PROJ_K = 768, 16, 4096, 32
GPU_FLOPS = 400e12
"""bf16 dense matmul rate assumed per H100/H200 GPU (their peak is ~990 TFLOP/s)."""
LINKS = [  # label, GPUs, all-reduce bus bandwidth per GPU (bytes/s); None for one GPU
    ("1 GPU", 1, None),
    ("1 node x 8 GPUs, NVLink 300 GB/s", 8, 300e9),
    ("2 nodes x 8 GPUs, InfiniBand 50 GB/s", 16, 50e9),
    ("2 nodes x 8 GPUs, InfiniBand 25 GB/s", 16, 25e9),
]


def launch(config: str, tasks: list[dict]) -> tuple[float, list[dict]]:
    """Run the worker's tasks in `config`; wall seconds of the whole launch and every rank's report."""
    nproc, threads = CONFIGS[config]
    cmd = [sys.executable, "-m", WORKER, json.dumps(tasks)]
    if nproc > 1:
        cmd[1:3] = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", WORKER]
    reports_dir = pathlib.Path(tempfile.mkdtemp(prefix="saev-bench-"))
    env = os.environ | {
        REPORTS: str(reports_dir),
        "SAEV_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "OMP_WAIT_POLICY": "PASSIVE",
        "TQDM_DISABLE": "1",
    }
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    reports = sorted(
        (json.loads(p.read_text()) for p in reports_dir.glob("rank*.json")), key=lambda r: r["rank"]
    )
    shutil.rmtree(reports_dir)
    if result.returncode != 0:
        raise SystemExit(f"{config}: {' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    if len(reports) != nproc or any(r["size"] != nproc or r["threads"] != threads for r in reports):
        raise SystemExit(f"{config}: unexpected reports {reports}")
    return wall, reports


def seconds(reports: list[dict], task: int, call: int) -> float:
    """A timed call's seconds (between barriers, so every rank reports about the same)."""
    return max(r["tasks"][task][call]["seconds"] for r in reports)


def per_step(reports: list[dict], task: int, short: int, long: int) -> list[dict[str, float]]:
    """Each rank's bytes per training step by kind of collective: the long call's less the short call's."""
    out = []
    for rep in reports:
        a, b = rep["tasks"][task][short], rep["tasks"][task][long]
        d_steps = b["steps"] - a["steps"]
        out.append({k: (b["traffic"].get(k, 0) - a["traffic"].get(k, 0)) / d_steps for k in KINDS})
    return out


def build_inputs(root: pathlib.Path, n_imgs: int) -> tuple[pathlib.Path, pathlib.Path]:
    """Synthetic images for the built-in ViT, and a d_vit 64 store (cached under `root`)."""
    from saev import synthetic
    from saev.data.statistics import store_normalization
    from saev.data.store import open_shards
    from tests.ground_truth import make_dictionary_store

    images = root / "images"
    if len(list((images / "images").glob("*.png"))) != n_imgs:
        shutil.rmtree(images, ignore_errors=True)
        synthetic.generate(images, n_imgs, seed=0)
    stores = list((root / "store").glob("*/metadata.json"))
    if stores:
        store = stores[0].parent
    else:  # 200,000 tokens, each 3-5 of 256 unit atoms in d 64 plus noise, 16 tokens per "image"
        store = make_dictionary_store(root / "store", n_atoms=256, d=D_VIT, n_tokens=200_000).store
    store_normalization(open_shards(store), 0, "patches")  # cached beside the store before any timing
    return images / "images", store


def read_ms_per_batch(store: pathlib.Path, n: int = 30) -> float:
    """Reading one shuffled global batch from the store, as every rank does (then keeps its slice)."""
    from saev.data import iter_batches

    start = time.perf_counter()
    for i, _ in enumerate(iter_batches(store, 0, "patches", BATCH, shuffle=True, drop_last=True)):
        if i + 1 == n:
            break
    return 1000 * (time.perf_counter() - start) / n


def grad_bytes(d_vit: int, d_sae: int) -> int:
    """float32 gradients of W_enc, W_dec, b_enc and b_dec: a step's one all-reduce bucket."""
    return 4 * (2 * d_vit * d_sae + d_sae + d_vit)


def step_bytes(d_vit: int, d_sae: int) -> int:
    """all_reduce bytes a rank sends in a TopK step without dead latents or metrics: the gradients, the
    loss check (one float32) and the fired mask (one uint8 per latent)."""
    return grad_bytes(d_vit, d_sae) + 4 + d_sae


def measure_throughput(args, images: pathlib.Path, base: dict, sweep: dict):
    """Every case in every configuration, interleaved: throughputs, launch overheads, bytes per step,
    load averages."""
    steps = [int(s) for s in args.steps.split(",")]
    sweep_steps = [int(s) for s in args.sweep_steps.split(",")]
    results: dict[str, dict[str, list[float]]] = {case: {c: [] for c in CONFIGS} for case in CASES}
    overhead: dict[str, list[float]] = {c: [] for c in CONFIGS}
    traffic: dict[str, list[dict]] = {"topk, --split batch": [], "4-run sweep, --split runs": []}
    loads: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for r in range(args.repeats):
        for n, config in enumerate(CONFIGS):
            out = args.root / "out" / f"{r}-{n}"
            tasks = [
                {
                    "record": {
                        "images": str(images),
                        "dump_to": str(out / "record"),
                        "n_patches_per_shard": VIT_TOKENS * args.imgs_per_shard,
                    }
                },
                {"train": base, "out": str(out / "train"), "steps": steps},
                {"train": sweep, "out": str(out / "sweep"), "steps": sweep_steps},
            ]
            loads[config].append(os.getloadavg()[0])
            wall, reports = launch(config, tasks)
            results["recording"][config].append(args.n_imgs / seconds(reports, 0, 0))
            for task, case, runs in (
                (1, "training, --split batch", 1),
                (2, "4-run sweep, --split runs", N_RUNS),
            ):
                calls = reports[0]["tasks"][task]
                d_steps = calls[2]["steps"] - calls[1]["steps"]
                results[case][config].append(
                    runs * d_steps * BATCH / (seconds(reports, task, 2) - seconds(reports, task, 1))
                )
            timed = sum(
                seconds(reports, t, c) for t, task in enumerate(reports[0]["tasks"]) for c in range(len(task))
            )
            overhead[config].append(wall - timed)
            if CONFIGS[config][0] > 1:
                traffic["topk, --split batch"] += per_step(reports, 1, 1, 2)
                traffic["4-run sweep, --split runs"] += per_step(reports, 2, 1, 2)
            shutil.rmtree(out)
    return results, overhead, traffic, loads


def check_traffic(root: pathlib.Path, base: dict) -> tuple[list[list], dict[str, list[dict]]]:
    """Two processes with every collective exercised: runs of 2 and of 10 steps, the bytes each rank sent
    against the sizes of the collectives the code makes. Batch 512 and k 4 leave latents silent in every
    step, and --dead-tokens 512 makes them dead at once, so AuxK runs; metrics every step; BatchTopK
    selects over the whole batch from the first step."""
    small = base | {"batch_size": CHECK_BATCH, "k": CHECK_K, "dead_tokens": CHECK_BATCH, "log_every": 1}
    checks = {
        "topk": small,
        "batchtopk": small | {"arch": "batchtopk", "topk_warmup": 0.0},
    }
    check_steps = [2, 10]
    rows, traffic = [], {}
    for name, settings in checks.items():
        out = root / "out" / f"check-{name}"
        _, reports = launch(
            "2 procs x 1 thread", [{"train": settings, "out": str(out), "steps": check_steps}]
        )
        batchtopk = settings["arch"] == "batchtopk"
        for i, n_steps in enumerate(check_steps):
            [metrics] = list((out / f"{i}-{n_steps}").glob("*/metrics.jsonl"))
            logged = [json.loads(line) for line in metrics.read_text().splitlines()]
            n_aux = sum(m["aux"] > 0 for m in logged)
            expected = {
                "all_reduce": 4 * D_VIT  # b_dec initialised to the whole batch's mean, once
                + n_steps * step_bytes(D_VIT, D_SAE)  # gradients, loss check, fired mask
                + len(logged) * 6 * 4  # the metrics' six loss terms
                + n_aux * (4 * (D_VIT + 1) + 4)  # AuxK: the whole batch's residual mean, then variance
                + (n_steps * 4 if batchtopk else 0)  # BatchTopK: the smallest kept value
                + 8 * (4 + D_VIT + 2 * D_SAE),  # held-out evaluation's float64 sums, once
                "all_gather": n_steps * settings["k"] * settings["batch_size"] * 4 if batchtopk else 0,
            }
            for rep in reports:
                got = rep["tasks"][0][i]["traffic"]
                for kind, want in expected.items():
                    same = "yes" if got.get(kind, 0) == want else "**no**"
                    rows.append(
                        [name, n_steps, n_aux, rep["rank"], kind, f"{got.get(kind, 0):,}", f"{want:,}", same]
                    )
        traffic[f"{name}, {CHECK}"] = per_step(reports, 0, 0, 1)
        shutil.rmtree(out)
    return rows, traffic


def throughput_table(results: dict[str, dict[str, list[float]]]) -> str:
    rows = []
    for case, per in results.items():
        one1, one2, two = (statistics.median(per[c]) for c in CONFIGS)
        rows.append(
            [f"{case} ({CASES[case]})", f"{one1:,.0f}", f"{one2:,.0f}", f"{two:,.0f}", two / one2, two / one1]
        )
    return table(["case", *CONFIGS, "2 procs / 1 proc x 2 threads", "2 procs / 1 proc x 1 thread"], rows)


def projection(factor: float, gather_factor: float) -> str:
    """Step time for ViT-B/16 at 16x on GPUs: compute at GPU_FLOPS against a ring all-reduce of the bytes
    per step (the model scaled by `factor`, measured / modelled at d_vit 64), without overlap (saev
    all-reduces its one gradient bucket after the backward); and what BatchTopK's all-gather of
    candidates would add (its model scaled by `gather_factor`)."""
    d, s = PROJ_D_VIT, PROJ_D_VIT * PROJ_EXP
    payload = factor * step_bytes(d, s)
    lines = [
        f"projection, ViT-B/16 at 16x (d_vit {d}, d_sae {s:,}), TopK k {PROJ_K}: measured / modelled bytes per "
        f"step at d_vit {D_VIT} = {factor:.5f} (all_reduce), {gather_factor:.5f} (BatchTopK's all_gather), so "
        f"{payload / 1e6:.2f} MB all-reduced per step (float32 gradients)",
        f"assumed: {GPU_FLOPS / 1e12:.0f} TFLOP/s bf16 per GPU; a dense step 6 x batch x 2 d_vit d_sae FLOPs; a "
        "TopK step with sparse decoding ~4 x batch x d_vit x d_sae (encoder forward and its weight gradient; "
        "the k decoder rows are negligible); a ring all-reduce moves 2(N-1)/N of the payload per GPU at the "
        "bus bandwidth; no overlap of communication and compute; small collectives' latency and data "
        "reading left out. BatchTopK: each GPU all-gathers k x global batch float32 candidates, (N-1) times "
        "that per GPU over the same links",
        "",
    ]
    for scaling, per_gpu in (("global batch 4,096", False), ("4,096 per GPU", True)):
        rows = []
        one_gpu = None
        for label, n_gpu, bw in LINKS:
            b = PROJ_BATCH if per_gpu else PROJ_BATCH / n_gpu
            dense_ms = 1e3 * 6 * b * 2 * d * s / GPU_FLOPS
            topk_ms = 1e3 * 4 * b * d * s / GPU_FLOPS
            moved = 2 * (n_gpu - 1) / n_gpu * payload
            comm_ms = 1e3 * moved / bw if bw else 0.0
            tok_s = b * n_gpu / ((topk_ms + comm_ms) / 1e3)
            gathered = (n_gpu - 1) * gather_factor * 4 * PROJ_K * b * n_gpu
            one_gpu = one_gpu or tok_s
            rows.append(
                [
                    label,
                    f"{b:,.0f}",
                    f"{dense_ms:.3f}",
                    f"{topk_ms:.3f}",
                    f"{moved / 1e6:.1f}",
                    f"{comm_ms:.3f}",
                    f"{comm_ms / (dense_ms + comm_ms):.0%}",
                    f"{comm_ms / (topk_ms + comm_ms):.0%}",
                    f"{tok_s / 1e6:.2f}",
                    f"{tok_s / one_gpu:.2f}",
                    f"{gathered / 1e6:.1f} MB, {1e3 * gathered / bw if bw else 0:.3f} ms",
                ]
            )
        headers = [
            "setup",
            "batch per GPU",
            "compute ms, dense",
            "compute ms, TopK",
            "MB moved per GPU",
            "all-reduce ms",
            "comm share, dense",
            "comm share, TopK",
            "M tok/s, TopK",
            "vs 1 GPU, TopK",
            "BatchTopK adds",
        ]
        lines += [f"{scaling}:", table(headers, rows), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="launches per configuration")
    parser.add_argument("--n-imgs", type=int, default=600, help="images recorded per launch")
    parser.add_argument("--imgs-per-shard", type=int, default=100)
    parser.add_argument("--steps", default="2,5,40", help="warm-up, short and long run of `saev train`")
    parser.add_argument("--sweep-steps", default="1,3,15", help="the same for the 4-run sweep")
    parser.add_argument("--root", type=pathlib.Path, default=REPO / ".cache" / "bench" / "distributed")
    args = parser.parse_args()
    start_all = time.perf_counter()
    args.root = args.root.resolve()
    shutil.rmtree(args.root / "out", ignore_errors=True)
    images, store = build_inputs(args.root, args.n_imgs)
    (args.root / "sweep.toml").write_text("".join(f"{k} = {v}\n" for k, v in SWEEP.items()))
    base = {"shards": str(store), "layer": 0, "arch": "topk", "k": K, "exp_factor": EXP, "batch_size": BATCH}
    sweep = base | {"sweep": str(args.root / "sweep.toml"), "split": "runs"}
    results, overhead, traffic, loads = measure_throughput(args, images, base, sweep)
    check_rows, more = check_traffic(args.root, base)
    traffic |= more
    read_ms = read_ms_per_batch(store)

    steps, sweep_steps = args.steps.split(","), args.sweep_steps.split(",")
    print(
        f"{os.cpu_count()} CPU cores (os.cpu_count()), Gloo; medians of {args.repeats} launches per "
        "configuration, interleaved, timed inside the processes"
    )
    print(
        f"recording: built-in ViT (shapes-vit), {args.n_imgs} synthetic 128 px PNGs, block -2, batch 64, "
        f"--n-workers 0, {args.imgs_per_shard} images per shard; training: TopK k {K}, d_vit {D_VIT} x {EXP} = "
        f"{D_SAE:,} latents, batch {BATCH}, from the runs of {steps[1]} and {steps[2]} steps (sweep: "
        f"{sweep_steps[1]} and {sweep_steps[2]} steps, {' x '.join(f'{k} {v}' for k, v in SWEEP.items())})"
    )
    print()
    print(throughput_table(results))
    print()
    print(
        "each launch, in order, and the 1-minute load average before it (this benchmark's own launches count):"
    )
    for case, per in results.items():
        print(f"- {case}: " + "; ".join(f"{c}: {', '.join(f'{x:,.0f}' for x in v)}" for c, v in per.items()))
    print(
        "- load average: " + "; ".join(f"{c}: {', '.join(f'{x:.2f}' for x in v)}" for c, v in loads.items())
    )
    print()
    rows = [[c, statistics.median(v)] for c, v in overhead.items()]
    print(table(["configuration", "start-up and shut-down per launch, s (wall - timed calls)"], rows))
    print()
    grad = grad_bytes(D_VIT, D_SAE)
    rows = []
    for name, per in traffic.items():
        ar, ag = (statistics.median([p[kind] for p in per]) for kind in ("all_reduce", "all_gather"))
        rows.append([name, f"{ar:,.1f}", f"{ag:,.1f}", f"{ar / grad:.5f}"])
    print(f"bytes each rank sends per training step, 2 processes (gradient bucket: {grad:,} bytes)")
    print(table(["run", "all_reduce B/step", "all_gather B/step", "all_reduce / gradient bucket"], rows))
    print()
    print("check: bytes each rank sent in whole runs against the sizes of the collectives")
    headers = ["arch", "steps", "steps with AuxK", "rank", "collective", "measured B", "expected B", "equal"]
    print(table(headers, check_rows))
    print()
    print(
        f"reading one shuffled global batch of {BATCH} x {D_VIT} from the store: {read_ms:.1f} ms "
        "(every rank reads the whole global batch, then keeps its slice)"
    )
    print()
    measured = statistics.median([p["all_reduce"] for p in traffic["topk, --split batch"]])
    gathered = statistics.median([p["all_gather"] for p in traffic[f"batchtopk, {CHECK}"]])
    print(projection(measured / step_bytes(D_VIT, D_SAE), gathered / (4 * CHECK_K * CHECK_BATCH)))
    print(f"benchmark wall time: {time.perf_counter() - start_all:.0f} s")


if __name__ == "__main__":
    main()

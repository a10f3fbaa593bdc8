"""A sweep of 4 SAEs trained in one pass against 4 separate `saev train` runs on the same store.

Each variant runs as real commands (new processes), so the separate runs pay what a user would:
start-up, reading and decoding the store, normalising, training and the held-out evaluation.
With --cold the store's pages are dropped from the page cache before every command, as when the
store is larger than memory (the usual case: ViT-B/16 on ImageNet is ~723 GB per layer).
Run: .venv/bin/python -m benchmarks.sweep_pass [--exp-factor 2] [--n-imgs 2000] [--cold] [--device cuda]
"""

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

from benchmarks.common import table
from saev.data.writer import write_arrays

D, TOKENS = 768, 197
SWEEP = {"k": [16, 32], "lr": [4e-4, 1e-3]}


def build_store(root: pathlib.Path, n_imgs: int, dtype: str) -> pathlib.Path:
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((64, D)).astype(np.float32)
    acts = (
        rng.standard_normal((n_imgs, 1, TOKENS, 64)).astype(np.float32) @ basis
    )  # low-rank, ViT-like structure
    return write_arrays(
        root,
        acts,
        vit_family="synthetic",
        vit_ckpt="bench",
        layers=(-2,),
        cls_token=True,
        data={"__class__": "Bench"},
        dtype=dtype,
    )


def drop_cache(store: pathlib.Path) -> None:
    for path in store.glob("acts*.bin"):
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def run(args: list[str], store: pathlib.Path, cold: bool) -> float:
    if cold:
        drop_cache(store)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "saev", "train", *args], check=True, capture_output=True)
    return time.perf_counter() - start


def read_pass(store: pathlib.Path, cold: bool) -> float:
    """One shuffled, normalised pass over the store as training reads it, with no SAE: what a sweep shares."""
    from saev.data import iter_batches

    if cold:
        drop_cache(store)
    start = time.perf_counter()
    for _ in iter_batches(store, layer=-2, batch_size=4096, shuffle=True, normalize=True):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-imgs", type=int, default=2000)
    parser.add_argument("--exp-factor", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--device", default="cpu", help="where the SAEs train (cuda on a GPU machine)")
    parser.add_argument("--root", type=pathlib.Path, default=pathlib.Path(".cache/bench/sweep"))
    args = parser.parse_args()
    store = build_store(args.root / "store", args.n_imgs, args.dtype)
    n_tokens = args.n_imgs * (TOKENS - 1)
    common = [
        "--shards",
        str(store),
        "--exp-factor",
        str(args.exp_factor),
        "--n-train",
        str(int(n_tokens * 0.9)),
        "--batch-size",
        "4096",
        "--log-every",
        "1000",
        "--device",
        args.device,
    ]
    shutil.rmtree(args.root / "runs", ignore_errors=True)
    (args.root / "sweep.toml").write_text("\n".join(f"{k} = {v}" for k, v in SWEEP.items()) + "\n")
    run(
        [*common, "--out", str(args.root / "runs" / "warm-up"), "--k", "16", "--n-train", "4096"],
        store,
        False,
    )  # caches normalisation stats
    sweep_s = run(
        [*common, "--out", str(args.root / "runs" / "sweep"), "--sweep", str(args.root / "sweep.toml")],
        store,
        args.cold,
    )
    separate_s = 0.0
    for k in SWEEP["k"]:
        for lr in SWEEP["lr"]:
            separate_s += run(
                [*common, "--out", str(args.root / "runs" / "separate"), "--k", str(k), "--lr", str(lr)],
                store,
                args.cold,
            )
    startup_s = time.perf_counter()
    subprocess.run([sys.executable, "-m", "saev", "train", "--help"], check=True, capture_output=True)
    startup_s = time.perf_counter() - startup_s
    read_s = read_pass(store, args.cold)
    gb = args.n_imgs * TOKENS * D * np.dtype(np.float16).itemsize / 1e9  # both store dtypes are 16-bit
    print(
        f"4 TopK SAEs (d_vit {D}, {args.exp_factor}x, k {SWEEP['k']} x lr {SWEEP['lr']}), one pass over {n_tokens:,} tokens, {args.dtype} store {gb:.2f} GB, {'cold' if args.cold else 'warm'} page cache, {args.device}, {torch.get_num_threads()} threads"
    )
    print(
        table(
            ["variant", "wall s", "ratio to separate runs"],
            [
                ["4 separate `saev train` runs", separate_s, 1.0],
                ["one `saev train --sweep` (4 SAEs, one pass)", sweep_s, sweep_s / separate_s],
                ["(shared) one data pass alone, no SAE", read_s, read_s / separate_s],
                ["(shared) process start-up, `saev train --help`", startup_s, startup_s / separate_s],
            ],
        )
    )


if __name__ == "__main__":
    main()

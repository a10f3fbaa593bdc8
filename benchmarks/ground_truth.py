"""Ground-truth recovery: SAEs trained through `saev train` on activations built from a known dictionary.

512 unit atoms in d = 64, 3-5 active per token with magnitudes in [0.5, 2], noise 0.01. An atom
counts as recovered when some decoder row has cosine >= 0.9 with it. Baseline: the same
architecture with random (untrained) weights.

    .venv/bin/python -m benchmarks.ground_truth [--n-tokens 400000]   # tuned settings
    .venv/bin/python -m benchmarks.ground_truth --defaults            # defaults, 1M/3M/10M tokens

`--defaults` trains every architecture with `saev train`'s defaults (16x, batch 4096, default
learning rate, warm-ups and coefficients; only k = 4 given to topk and batchtopk) on a store of
1M tokens, for 1M, 3M and 10M training tokens.
"""

import argparse
import pathlib
import shutil
import time

import torch

import saev.nn
from benchmarks.common import table
from saev.training import TrainConfig, train
from tests.ground_truth import make_dictionary_store, recovered_fraction

SETTINGS = {
    "topk": dict(arch="topk", k=4, lr=1e-3),
    "batchtopk": dict(arch="batchtopk", k=4, lr=3e-3),
    "batchtopk, no topk warm-up": dict(arch="batchtopk", k=4, lr=3e-3, topk_warmup=0.0),
    "relu": dict(arch="relu", sparsity_coeff=0.028, lr=1e-3, sparsity_warmup=500),
}


DEFAULTS = {
    "topk": dict(arch="topk", k=4),
    "batchtopk": dict(arch="batchtopk", k=4),
    "relu": dict(arch="relu"),
    "jumprelu": dict(arch="jumprelu"),
    "gated": dict(arch="gated"),
}


def defaults(root: pathlib.Path, budgets: list[int], archs: list[str]) -> None:
    dictionary = make_dictionary_store(root / "store-1m", n_atoms=512, d=64, n_tokens=1_000_000)
    rows = []
    for name in archs:
        setting = DEFAULTS[name]
        for n_train in budgets:
            cfg = TrainConfig(
                shards=dictionary.store, out=root / "runs-defaults", layer=0, n_train=n_train, **setting
            )
            start = time.perf_counter()
            [result] = train(cfg)
            sae = saev.nn.load(result.checkpoint)
            recovered = recovered_fraction(dictionary.atoms_AD, sae.W_dec)
            e = result.eval
            rows.append(
                [name, f"{n_train:,}", f"{recovered:.1%}", e.fve, e.l0, e.n_dead, time.perf_counter() - start]
            )
    print(f"defaults: 512 atoms in d=64, 3-5 active, a 1M-token store, {torch.get_num_threads()} threads")
    print(
        table(["arch", "training tokens", "atoms recovered", "held-out FVE", "L0", "dead", "seconds"], rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-tokens", type=int, default=400_000)
    parser.add_argument("--n-train", type=int, default=10_000_000)
    parser.add_argument("--root", type=pathlib.Path, default=pathlib.Path(".cache/bench/ground-truth"))
    parser.add_argument("--defaults", action="store_true", help="default settings at 1M, 3M and 10M tokens")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--archs", nargs="+", choices=list(DEFAULTS), default=list(DEFAULTS))
    args = parser.parse_args()
    if args.defaults:
        shutil.rmtree(args.root / "runs-defaults", ignore_errors=True)
        defaults(args.root, args.budgets, args.archs)
        return
    shutil.rmtree(args.root / "runs", ignore_errors=True)
    dictionary = make_dictionary_store(args.root / "store", n_atoms=512, d=64, n_tokens=args.n_tokens)
    rows = []
    for name, setting in SETTINGS.items():
        cfg = TrainConfig(
            shards=dictionary.store,
            out=args.root / "runs",
            layer=0,
            exp_factor=16,
            n_train=args.n_train,
            batch_size=1024,
            lr_warmup=100,
            **setting,
        )
        start = time.perf_counter()
        [result] = train(cfg)
        elapsed = time.perf_counter() - start
        sae = saev.nn.load(result.checkpoint)
        random = saev.nn.SparseAutoencoder(sae.cfg)
        rows.append(
            [
                name,
                f"{recovered_fraction(dictionary.atoms_AD, sae.W_dec):.1%}",
                f"{recovered_fraction(dictionary.atoms_AD, random.W_dec):.1%}",
                result.eval.fve,
                result.eval.l0,
                elapsed,
            ]
        )
    print(
        f"512 atoms in d=64, 3-5 active, {args.n_train:,} training tokens, d_sae 1024, {torch.get_num_threads()} threads"
    )
    print(
        table(
            ["arch", "atoms recovered (cos >= 0.9)", "untrained baseline", "held-out FVE", "L0", "seconds"],
            rows,
        )
    )


if __name__ == "__main__":
    main()

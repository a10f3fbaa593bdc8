"""Ground-truth recovery: SAEs trained through `saev train` on activations built from a known dictionary.

512 unit atoms in d = 64, 3-5 active per token with magnitudes in [0.5, 2], noise 0.01. An atom
counts as recovered when some decoder row has cosine >= 0.9 with it. Baseline: the same
architecture with random (untrained) weights.
Run: .venv/bin/python -m benchmarks.ground_truth [--n-tokens 400000]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-tokens", type=int, default=400_000)
    parser.add_argument("--n-train", type=int, default=10_000_000)
    parser.add_argument("--root", type=pathlib.Path, default=pathlib.Path(".cache/bench/ground-truth"))
    args = parser.parse_args()
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

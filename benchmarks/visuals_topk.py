"""Top-k pass of `saev visuals` against the reference's (per-example Python loop) on the same store.

Store: >= 200,000 patch tokens of d_vit 768 (reference 0.1.0 layout, page cache warm); SAE with
6,144 latents; top 16 images per latent, sorted by max patch activation. Each variant runs in its
own process so its peak memory (max RSS) is its own.
Run: .venv/bin/python -m benchmarks.visuals_topk [--n-imgs 1100]
"""

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

import torch

import saev.data
import saev.nn
from benchmarks.common import table
from benchmarks.store_read import TOKENS, build_store, warm

D, D_SAE, TOP_K = 768, 6144, 16


def write_sae(path: pathlib.Path) -> None:
    """A random ReLU SAE as a V0b file, which both projects read."""
    from tests.reference import HEADERS, write_reference

    sae = saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=D, d_sae=D_SAE, seed=0))
    with torch.no_grad():
        sae.b_enc.fill_(-1.5)  # sparse codes, as in a trained SAE
    state = {k: getattr(sae, k).detach() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    write_reference(path, HEADERS["V0b"] | {"d_vit": D, "exp_factor": D_SAE // D}, state)


def run_ours(store_dir: pathlib.Path, sae_path: pathlib.Path) -> float:
    from saev.visuals.topk import top_activations

    sae, store = saev.nn.load(sae_path), saev.data.open_shards(store_dir)
    start = time.perf_counter()
    top_activations(sae, store, -2, TOP_K, "patch", progress=False)
    return time.perf_counter() - start


def run_reference(store_dir: pathlib.Path, sae_path: pathlib.Path) -> float:
    from tests.reference import load_reference

    load_reference()
    import saev_ref.config
    import saev_ref.visuals

    data = saev_ref.config.DataLoad(
        shard_root=str(store_dir), patches="patches", layer=-2, scale_mean=False, scale_norm=False
    )
    cfg = saev_ref.config.Visuals(
        ckpt=str(sae_path),
        data=data,
        top_k=TOP_K,
        n_workers=0,
        topk_batch_size=TOKENS * 16 - 16,
        sae_batch_size=4096,
        device="cpu",
        sort_by="patch",
    )
    start = time.perf_counter()
    saev_ref.visuals.get_topk_patch(cfg)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-imgs", type=int, default=1100)
    parser.add_argument("--variant", choices=["ours", "reference"])
    parser.add_argument("--root", type=pathlib.Path, default=pathlib.Path(".cache/bench/visuals"))
    args = parser.parse_args()
    store_dir = build_store(args.root / "store", args.n_imgs)
    sae_path = args.root / "sae.pt"
    if args.variant:
        warm(store_dir)
        seconds = (run_ours if args.variant == "ours" else run_reference)(store_dir, sae_path)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))
        return
    write_sae(sae_path)
    n_tokens = args.n_imgs * (TOKENS - 1)
    rows = {}
    for variant in ("ours", "reference"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.visuals_topk",
                "--variant",
                variant,
                "--n-imgs",
                str(args.n_imgs),
                "--root",
                str(args.root),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    ref = rows["reference"]["seconds"]
    print(
        f"Top-{TOP_K} pass over {n_tokens:,} patch tokens (d_vit {D}, {D_SAE} latents), {torch.get_num_threads()} threads"
    )
    print(
        table(
            ["top-k pass", "tokens/s", "peak RSS MB", "speed-up"],
            [[name, n_tokens / r["seconds"], r["peak_mb"], ref / r["seconds"]] for name, r in rows.items()],
        )
    )


if __name__ == "__main__":
    main()

"""Reading a float32 store from the page cache: iter_batches against raw reads and a per-example reader.

Builds a ~0.8 GB store (ViT-B/16 shape: 197 tokens x 768) in the reference 0.1.0 layout, warms the
page cache, then reports GB/s of activation payload delivered as float32 tensors.
Run: .venv/bin/python -m benchmarks.store_read [--n-imgs 1300]
"""

import argparse
import json
import pathlib
import time

import numpy as np
import torch

import saev.data
from benchmarks.common import table

D, TOKENS = 768, 197


def build_store(root: pathlib.Path, n_imgs: int, per_shard: int = 400) -> pathlib.Path:
    if (root / "metadata.json").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range((n_imgs + per_shard - 1) // per_shard):
        shard = rng.standard_normal((per_shard, 1, TOKENS, D), dtype=np.float32)
        shard.tofile(root / f"acts{k:06d}.bin")
    meta = {
        "vit_family": "clip",
        "vit_ckpt": "ViT-B-16/openai",
        "layers": [-2],
        "n_patches_per_img": TOKENS - 1,
        "cls_token": True,
        "d_vit": D,
        "seed": 42,
        "n_imgs": n_imgs,
        "n_patches_per_shard": per_shard * TOKENS,
        "data": "bench",
    }
    (root / "metadata.json").write_text(json.dumps(meta))
    return root


def warm(root: pathlib.Path) -> None:
    for path in sorted(root.glob("acts*.bin")):
        path.read_bytes()


def rate(fn, n_bytes: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n_bytes / best / 1e9


def raw_fromfile(root: pathlib.Path) -> None:
    for path in sorted(root.glob("acts*.bin")):
        torch.from_numpy(np.fromfile(path, dtype=np.float32))


def drain(batches) -> int:
    n = 0
    for batch in batches:
        n += batch["act"].shape[0]
    return n


def per_example_memmap(root: pathlib.Path, indices: np.ndarray) -> None:
    """The reference 0.1.0 Dataset's access pattern: one memmap and one row copy per example."""
    meta = json.loads((root / "metadata.json").read_text())
    per_shard = meta["n_patches_per_shard"] // TOKENS
    for i in indices:
        img, patch = divmod(int(i), TOKENS - 1)
        shard, pos = divmod(img, per_shard)
        acts = np.memmap(
            root / f"acts{shard:06d}.bin", mode="c", dtype=np.float32, shape=(per_shard, 1, TOKENS, D)
        )
        torch.from_numpy(acts[pos, 0, patch + 1].copy())


def reference_dataset(root: pathlib.Path, indices: np.ndarray) -> None:
    import saev_ref.activations
    import saev_ref.config

    ds = saev_ref.activations.Dataset(
        saev_ref.config.DataLoad(
            shard_root=str(root), patches="patches", layer=-2, scale_mean=False, scale_norm=False
        )
    )
    for i in indices:
        ds[int(i)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-imgs", type=int, default=1300)
    parser.add_argument("--root", type=pathlib.Path, default=pathlib.Path(".cache/bench/store"))
    args = parser.parse_args()
    root = build_store(args.root, args.n_imgs)
    warm(root)
    store = saev.data.open_shards(root)
    payload = len(store) * (TOKENS - 1) * D * 4
    file_bytes = sum(p.stat().st_size for p in root.glob("acts*.bin"))
    rows = [
        ["numpy.fromfile of every shard (whole files)", rate(lambda: raw_fromfile(root), file_bytes)],
        [
            "iter_batches ordered, batch 16384",
            rate(lambda: drain(saev.data.iter_batches(store, shuffle=False, batch_size=16384)), payload),
        ],
        [
            "iter_batches shuffled, batch 16384",
            rate(lambda: drain(saev.data.iter_batches(store, shuffle=True, batch_size=16384)), payload),
        ],
    ]
    sample = np.random.default_rng(0).permutation(len(store) * (TOKENS - 1))[:3000]
    rows.append(
        [
            "per-example memmap reads (reference pattern)",
            rate(lambda: per_example_memmap(root, sample), len(sample) * D * 4, repeats=1),
        ]
    )
    try:
        from tests.reference import load_reference

        load_reference()
        rows.append(
            [
                "reference saev 0.1.0 Dataset[i]",
                rate(lambda: reference_dataset(root, sample), len(sample) * D * 4, repeats=1),
            ]
        )
    except BaseException as err:  # pytest.skip raises a BaseException subclass
        print(f"(reference saev not available: {err})")
    base = rows[0][1]
    print(
        f"Store: {len(store)} images x {TOKENS - 1} patches x {D} float32 = {payload / 1e9:.2f} GB of patch activations, page cache warm, {torch.get_num_threads()} threads"
    )
    print(table(["reader", "GB/s", "ratio to numpy.fromfile"], [[name, r, r / base] for name, r in rows]))


if __name__ == "__main__":
    main()

"""How long naming every latent takes (`saev label`, issue 23), against a dense baseline and the
gallery's top-k pass on the same SAE and store.

    .venv/bin/python -m benchmarks.naming [--quickstart DIR] [--repeats 3]

Target: naming the quickstart's 1,024 latents adds at most 30 s on 2 idle cores. DIR is a `saev
quickstart` output folder (made there when DIR/report.json is missing; default
benchmarks/.bench_speed/qs, shared with benchmarks.bench_speed).

Rows, each the median of --repeats runs in this process (page cache warm after the first):
- saev label: `saev.naming.run.label` with the default settings, end to end (the SAE, the labels
  of the built-in world, one encoding pass kept as sparse codes, 13 concepts + 47 concept pairs
  scored on 1,500 choosing and 1,500 scoring images);
- its counting step alone (`name_latents` given the encoded codes and the candidates);
- baseline for that step: the same counts from dense codes (every patch x every latent as a float
  tensor, `fires.T @ truth` per half) as a plain implementation would keep them;
- for scale, the gallery's top-k pass (`saev.visuals.topk.top_activations`, top 12 as the
  quickstart's gallery), which naming runs beside.
"""

import argparse
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.common import quickstart_output, table
from saev import runtime
from saev.bench import inputs
from saev.data.store import open_shards
from saev.naming import candidates as cands
from saev.naming.names import name_latents
from saev.naming.run import label, spread
from saev.naming.settings import NamingSettings
from saev.nn import checkpoints
from saev.visuals.lookup import ImageLookup
from saev.visuals.topk import top_activations

DEFAULT_QS = pathlib.Path("benchmarks/.bench_speed/qs")
TARGET_S = 30.0


def median_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def dense_counts(gathered: inputs.Gathered, found: list[cands.Candidates], seed: int) -> list[torch.Tensor]:
    """The choosing and scoring halves' true-positive counts of every (latent, candidate), from dense codes."""
    codes = gathered.codes
    fires_NPS = torch.cat([b > 0 for b in codes.blocks()]).float()
    order = np.random.default_rng(seed).permutation(codes.n_images)
    out = []
    for half in (np.sort(order[: codes.n_images // 2]), np.sort(order[codes.n_images // 2 :])):
        f_US = fires_NPS[torch.from_numpy(half)].reshape(-1, codes.d_sae)
        for c in found:
            out.append(f_US.T @ torch.from_numpy(c.units(half)).float())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quickstart", type=pathlib.Path, default=DEFAULT_QS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sae_path, store_path = quickstart_output(args.quickstart)
    threads = runtime.system_choice()
    torch.set_num_threads(threads.threads)
    store = open_shards(store_path)
    sae = checkpoints.load(sae_path).eval()
    images = spread(len(store), NamingSettings().max_images)
    found = cands.from_knowledge(inputs.knowledge(store, images, ImageLookup(store).root, None))
    gathered = inputs.gather(sae, store, -2, images)
    load = os.getloadavg()[0]

    total, naming = median_of(lambda: label(sae_path, store, NamingSettings()), args.repeats)
    ours, _ = median_of(lambda: name_latents(gathered, found), args.repeats)
    dense, _ = median_of(lambda: dense_counts(gathered, found, 0), args.repeats)
    topk, _ = median_of(lambda: top_activations(sae, store, -2, 12, progress=False), args.repeats)
    n_named = naming.n_named  # type: ignore[attr-defined]
    print(
        f"{platform.processor() or platform.machine()}, {threads.threads} torch thread(s) ({threads.reason}), "
        f"1-min load {load:.2f}; {sae.cfg.d_sae} latents, {len(images)} images x {store.meta.n_patches_per_img} "
        f"patches; {sum(len(c.names) for c in found)} candidates; {n_named} latents named\n"
    )
    print(
        table(
            ["step", "seconds", "ratio"],
            [
                ["saev label, end to end", total, f"{total / TARGET_S:.2f} of the {TARGET_S:.0f} s target"],
                ["counting (name_latents, sparse codes)", ours, "1"],
                ["counting baseline (dense codes, fires.T @ truth)", dense, f"{dense / ours:.1f}x ours"],
                ["gallery top-k pass (top_activations, k=12)", topk, f"naming = {total / topk:.2f}x it"],
            ],
        )
    )


if __name__ == "__main__":
    main()

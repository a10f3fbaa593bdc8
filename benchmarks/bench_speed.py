"""How long `saev bench`'s full scorecard takes (issue 22), against visaebench on the metrics both have.

    .venv/bin/python -m benchmarks.bench_speed [--quickstart DIR] [--threads N]

Target: the full scorecard of one 1,024-latent SAE on the quickstart's 3,000 images in at most
2 minutes on 2 idle cores. DIR is a `saev quickstart` output folder (made there when DIR/report.json
is missing; default benchmarks/.bench_speed/qs): its report.json names the SAE and the store.

saev: `saev.bench.run.score(sae, store, BenchSettings())` on all the store's images, timed as a
whole and step by step (the functions the runner calls are wrapped with timers for the run and
restored after; absorption includes pooling each object's codes; "other" is the rest: loading the
SAE, building the ViTs and the head, glue).
Every saev metric carries a 200-resample bootstrap interval; detection, sparsity, preservation and
steering have no visaebench counterpart.

Baseline, in the same run: visaebench 0.1.0 on the same SAE and the same activations (the store's
patch tokens at the SAE's layer, read into one [N, P, D] float tensor), its shared metrics with their
default settings: M2 FVU, M1 FeatureLocalization (Moran's I, grid 8 x 8), M4 SparseProbing, M5
MonosemanticityScore and M7 FeatureAbsorption. They give point values, without intervals, and each
encodes the activations again. The SAE is handed to visaebench as a wrapper whose `encode`/`decode`
are saev's on raw activations (saev normalises internally), under `torch.inference_mode` as
visaebench's own GenericSAE (buffers, no gradients) would run. Labels for M4 and M7: each image's
first object's shape (circle, square, triangle, star) from the built-in world's labels.json; M7's
sibling group is saev's polygon group {square, triangle, star}. M5's evaluator is a table of the
same centred embeddings saev computes (the built-in ViT, `saev.bench.downstream.embeddings`), so
the evaluator's forward passes are excluded from visaebench's time and shown as their own saev row
(saev embeds every image; visaebench would embed only the top images of the latents it scores,
counted below the table).

The page cache is warmed by one untimed read of the store before anything is timed. Both sides run
with the same torch threads: the CLI's choice (one per idle core by the 1-minute load average,
`OMP_WAIT_POLICY=PASSIVE`) unless --threads says otherwise.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does, before torch loads

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from visaebench.metrics.concept_detection.monosemanticity import MonosemanticityScore  # noqa: E402
from visaebench.metrics.concept_detection.sparse_probing import SparseProbing  # noqa: E402
from visaebench.metrics.disentanglement.absorption import FeatureAbsorption  # noqa: E402
from visaebench.metrics.reconstruction.fvu import FVU  # noqa: E402
from visaebench.metrics.spatial_coherence.localization import FeatureLocalization  # noqa: E402

import saev.bench.downstream  # noqa: E402
import saev.bench.inputs  # noqa: E402
import saev.bench.run  # noqa: E402
from benchmarks.common import quickstart_output, table  # noqa: E402
from saev import runtime, synthetic  # noqa: E402
from saev.bench.settings import BenchSettings  # noqa: E402
from saev.data.store import ShardStore, open_shards  # noqa: E402
from saev.nn import checkpoints  # noqa: E402
from saev.nn.modeling import SparseAutoencoder  # noqa: E402
from saev.visuals.lookup import ImageLookup  # noqa: E402

DEFAULT_QS = pathlib.Path("benchmarks/.bench_speed/qs")
TARGET_S = 120.0

# Scorecard steps in print order: (step, visaebench counterpart or "" when it has none).
STEPS = [
    ("load SAE, build ViTs and head, glue (other)", ""),
    ("labels and patch masks (inputs.knowledge)", "labels from labels.json"),
    ("read + encode once (inputs.gather)", "read activations to a tensor"),
    ("reconstruction: FVU", "M2 FVU"),
    ("sparsity: L0, dead, dense", ""),
    ("spatial: Moran's I", "M1 FeatureLocalization"),
    ("probing: k-sparse probes + dense baseline", "M4 SparseProbing"),
    ("detection: per-concept F1", ""),
    ("absorption", "M7 FeatureAbsorption"),
    ("decode images (ImageLookup.load)", ""),
    ("evaluator embeddings (built-in ViT)", ""),
    ("monosemanticity (given embeddings)", "M5 MonosemanticityScore"),
    ("preservation: spliced recovered, KL", ""),
    ("steering selectivity", ""),
]
OTHER = STEPS[0][0]


class StepTimer:
    """Seconds spent inside each wrapped function, summed per step name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[step] += time.perf_counter() - start

        return timed

    def run(self, step: str, fn: Callable[[], Any]) -> Any:
        return self.wrap(step, fn)()


@contextlib.contextmanager
def timed_steps(timer: StepTimer) -> Iterator[None]:
    """Wrap what `saev.bench.run.score` calls with timers; restore the originals afterwards."""
    run, inputs, downstream = saev.bench.run, saev.bench.inputs, saev.bench.downstream
    targets = [
        (inputs, "knowledge", STEPS[1][0]),
        (inputs, "gather", STEPS[2][0]),
        (run, "heldout", STEPS[3][0]),
        (run, "fvu", STEPS[3][0]),
        (run, "sparsity", STEPS[4][0]),
        (run, "morans_i", STEPS[5][0]),
        (inputs, "dense_pooled", STEPS[6][0]),
        (run, "sparse_probing", STEPS[6][0]),
        (run, "detection", STEPS[7][0]),
        (inputs.Items, "codes", STEPS[8][0]),
        (run, "absorption", STEPS[8][0]),
        (ImageLookup, "load", STEPS[9][0]),
        (downstream, "embeddings", STEPS[10][0]),
        (run, "monosemanticity", STEPS[11][0]),
        (downstream, "preservation", STEPS[12][0]),
        (downstream, "steering", STEPS[13][0]),
        (run, "stability", "stability"),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
    try:
        for obj, name, step in targets:
            setattr(obj, name, timer.wrap(step, getattr(obj, name)))
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


class RawSae:
    """visaebench's SAE interface over saev's SAE, on raw (unnormalised) activations."""

    def __init__(self, sae: SparseAutoencoder):
        self.sae = sae

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae.encode(x)

    @torch.inference_mode()
    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(f)


class EmbeddingTable:
    """visaebench's evaluator backbone over precomputed per-image embeddings (the "images" are indices)."""

    def __init__(self, emb_NE: np.ndarray):
        self.emb_NE = torch.from_numpy(emb_NE)
        self.asked: set[int] = set()

    def extract_activations(self, images: Sequence[int], layer: int = -1) -> torch.Tensor:
        self.asked.update(int(i) for i in images)
        return self.emb_NE[list(images)][:, None, :]


def first_shapes(store: ShardStore, root: pathlib.Path) -> np.ndarray:
    """Each image's first object's shape index (synthetic.SHAPES): visaebench's int label per image."""
    folder = root if (root / "labels.json").is_file() else root.parent
    by_name = {pathlib.PurePath(r.file).name: r for r in synthetic.load(folder).records}
    records = [by_name[pathlib.PurePath(rec["path"]).name] for rec in store.images]
    return np.array([synthetic.SHAPES.index(r.objects[0].shape) for r in records], dtype=np.int64)


def run_visaebench(
    sae: SparseAutoencoder, store: ShardStore, layer: int, root: pathlib.Path, emb_NE: np.ndarray
) -> tuple[dict[str, float], dict[str, float], int]:
    """visaebench's shared metrics: seconds and value per step, and how many images M5 embedded."""
    timer = StepTimer()
    images = list(range(len(store)))
    acts_NPD = timer.run(
        STEPS[2][0], lambda: torch.cat(list(saev.bench.inputs.read_acts(store, layer, images))).float()
    )
    labels_N = timer.run(STEPS[1][0], lambda: first_shapes(store, root))
    wrapped, backbone = RawSae(sae), EmbeddingTable(emb_NE)
    groups = {
        "shape:polygon": {
            "class_indices": [synthetic.SHAPES.index(s) for s in ("square", "triangle", "star")],
            "hierarchy_depth": 1,
        }
    }
    calls = {
        STEPS[3][0]: lambda: FVU().compute(wrapped, acts_NPD.reshape(-1, acts_NPD.shape[-1]), device="cpu"),
        STEPS[5][0]: lambda: FeatureLocalization(grid_size=store.grid).compute(
            wrapped, acts_NPD, device="cpu"
        ),
        STEPS[6][0]: lambda: SparseProbing().compute(wrapped, acts_NPD, device="cpu", labels=labels_N),
        STEPS[8][0]: lambda: FeatureAbsorption().compute(
            wrapped, acts_NPD, device="cpu", labels=labels_N, sibling_groups=groups
        ),
        STEPS[11][0]: lambda: MonosemanticityScore().compute(
            wrapped, acts_NPD, device="cpu", images=images, evaluator_backbone=backbone
        ),
    }
    values = {}
    for step, call in calls.items():
        print(f"visaebench: {step}", flush=True)
        values[step] = timer.run(step, call).value
    return dict(timer.seconds), values, len(backbone.asked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quickstart", type=pathlib.Path, default=DEFAULT_QS)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the CLI's choice)")
    args = parser.parse_args()

    sae_spec, store_path = quickstart_output(args.quickstart)
    choice = runtime.system_choice()
    threads = args.threads or choice.threads
    torch.set_num_threads(threads)
    store = open_shards(store_path)
    settings = BenchSettings()
    sae = checkpoints.load(sae_spec).eval()
    layer = saev.bench.run._layer(sae, store, sae_spec, settings.force)
    root = ImageLookup(store).root
    assert root is not None, f"{store.path}: not an image folder store"

    for _ in saev.bench.inputs.read_acts(store, layer, range(len(store))):
        pass  # warm the page cache for both sides

    load_before = os.getloadavg()
    timer = StepTimer()
    print("saev: the full scorecard", flush=True)
    start = time.perf_counter()
    with timed_steps(timer):
        card = saev.bench.run.score(sae_spec, store, settings)
    saev_total = time.perf_counter() - start
    load_saev = os.getloadavg()
    saev_s = dict(timer.seconds)
    saev_s[OTHER] = saev_total - sum(saev_s.values())

    # The same centred embeddings saev's monosemanticity read, as visaebench's evaluator table.
    from saev.activations.families import make_img_transform, make_vit

    family, _, ckpt = "builtin/shapes-vit".partition("/")
    vit = make_vit(family, ckpt).eval()
    lookup, transform = ImageLookup(store), make_img_transform(family, ckpt)
    pictures = {i: lookup.load(i) for i in range(len(store))}
    batches = saev.bench.run._pixels(pictures, list(pictures), transform, settings)
    emb_NE = saev.bench.downstream.embeddings(vit, batches, -(-len(store) // settings.batch_size))
    emb_NE = emb_NE - emb_NE.mean(0)

    vis_start = time.perf_counter()
    vis_s, vis_values, asked = run_visaebench(sae, store, layer, root, emb_NE)
    vis_total = time.perf_counter() - vis_start
    load_after = os.getloadavg()

    rows: list[list[object]] = []
    for step, counterpart in [*STEPS[1:], STEPS[0]]:
        ours = saev_s.get(step, 0.0)
        theirs = vis_s.get(step)
        rows.append(
            [
                step,
                round(ours, 2),
                f"{theirs:.2f} ({counterpart})" if theirs is not None else "—",
                f"{ours / theirs:.3g}" if theirs else "—",
            ]
        )
    shared = [s for s, c in STEPS if c]
    saev_shared = sum(saev_s.get(s, 0.0) for s in shared)
    vis_shared = sum(vis_s.get(s, 0.0) for s in shared)
    rows.append(
        [
            "**steps visaebench also has** (rows with a visaebench time)",
            round(saev_shared, 2),
            round(vis_shared, 2),
            f"{saev_shared / vis_shared:.3g}",
        ]
    )
    rows.append(["**full scorecard (wall)**", round(saev_total, 2), f"{vis_total:.2f} (its 5 metrics)", "—"])

    print()
    print(
        f"{os.cpu_count()} CPU cores (os.cpu_count()), {torch.get_num_threads()} torch threads "
        f"({'--threads' if args.threads else 'CLI choice: ' + choice.reason}), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )
    print(
        "1-minute load average: "
        f"{load_before[0]:.2f} before saev, {load_saev[0]:.2f} after saev, {load_after[0]:.2f} after visaebench"
    )
    print(
        f"SAE {sae_spec} ({sae.cfg.d_sae} latents), {card.n_images} images x "
        f"{store.meta.n_patches_per_img} patches x {store.meta.d_vit}, layer {layer}; "
        f"{settings.resamples} bootstrap resamples per saev metric; {len(card.metrics)} saev metrics, "
        f"skipped: {', '.join(card.skipped) or 'none'}"
    )
    print()
    print(table(["step", "saev s", "visaebench s", "ratio saev / visaebench"], rows))
    print()
    verdict = "under" if saev_total <= TARGET_S else "OVER"
    print(f"full scorecard: {saev_total:.1f} s, {verdict} the {TARGET_S:.0f} s target")
    print(
        f"evaluator embeddings excluded from visaebench's time: M5 asked for {asked} of the "
        f"{len(store)} images' embeddings (saev embeds all {len(store)})"
    )
    print()
    by_name = {m.name: m for m in card.metrics}
    compare = [
        ("fvu", STEPS[3][0], "saev: normalised space, held-out images; visaebench: raw space, all tokens"),
        ("morans_i", STEPS[5][0], ""),
        ("monosemanticity", STEPS[11][0], ""),
        ("absorption_rate", STEPS[8][0], "saev: objects, 4 hierarchies; visaebench: images, 1 group"),
    ]
    value_rows = []
    for name, step, note in compare:
        ours = by_name.get(name)
        est = None if ours is None else ours.estimate
        shown = "—" if est is None else f"{_num(est.value)} [{_num(est.low)}, {_num(est.high)}]"
        value_rows.append([name, shown, f"{vis_values[step]:.4g}", note])
    print(table(["metric", "saev value [95% interval]", "visaebench value", "note"], value_rows))


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


if __name__ == "__main__":
    main()

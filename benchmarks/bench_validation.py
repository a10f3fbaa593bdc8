"""Validating `saev bench`: does each scorecard metric rank SAEs the way ground truth does?

    .venv/bin/python -m benchmarks.bench_validation [--work benchmarks/.validation] [--n-images 3000]
                                                    [--score-images 600] [--resamples 50] [--no-x16]

In the built-in world (`saev quickstart`: synthetic images with 12 known concepts, the built-in
ViT, block -2) a family of SAEs of known quality is trained, and each SAE gets

- ground truth: the mean over the 12 concepts of the best latent's held-out F1
  (`saev.concepts.score_store` on the training store's last 10% of images, what the quickstart
  reports), and
- its scorecard: `saev.bench.run.score` with `resamples` bootstrap draws, on `--score-images` fresh
  images of the same world (a seed the family never trained on, recorded like the quickstart's);
  `--score-images 0` scores on the training store itself, as `saev bench` on the quickstart's store
  would (slower: every metric then reads all its images).

The family: the quickstart configuration (TopK k 16, 8x, 3M tokens, batch 1,024, lr 1e-3) with
seeds 0, 1 and 2; the same for 300k tokens (10x shorter) with seeds 0, 1, 2; k 4 and k 64; 2x and
16x wide; a random dictionary (the quickstart SAE with random unit decoder rows, encoder = decoder
transpose, b_enc 0, b_dec and normalisation kept); and the quickstart configuration trained on a
copy of the store whose patch activations had every dimension permuted independently across
tokens (marginals kept, concepts destroyed), scored on the real images.

For every metric: the Spearman correlation with ground truth across the SAEs that have it, signed
so that positive means "better by the metric is better by ground truth"; reseed noise, the mean over
the two seeded configurations of the standard deviation across seeds divided by the standard
deviation across all SAEs (both with ddof 1); and a verdict: "tracks" (signed rho >= 0.6 and noise
<= 0.5), "weak" (0.3 <= rho < 0.6), "fails" otherwise. A second table compares the quickstart SAE
(seed 0) with the random dictionary and the 10x shorter run on every directional metric.

Everything is made under --work and reused on rerun: images and stores are skipped when done,
runs resume, scorecards are cached per SAE together with a hash of `saev/bench`'s source (edit the
scorecard and they are recomputed). Output: the tables (Markdown), WORK/validation.md and the raw
numbers in WORK/validation.json.
"""

import os

# As the `saev` command does (saev.cli, saev.runtime): idle OpenMP threads sleep instead of spinning,
# so a busy neighbour does not slow training tenfold. Read once, when torch loads below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402
import torch  # noqa: E402

import saev.bench  # noqa: E402
from benchmarks.common import table  # noqa: E402
from saev import builtin, concepts, runtime, synthetic  # noqa: E402
from saev.bench.run import BenchSettings, score  # noqa: E402
from saev.commands import quickstart  # noqa: E402
from saev.data.store import ShardStore, open_shards  # noqa: E402
from saev.data.writer import write_arrays  # noqa: E402
from saev.errors import ConfigError  # noqa: E402
from saev.fileio import read_json, write_json  # noqa: E402
from saev.nn import checkpoints  # noqa: E402
from saev.training import TrainConfig, train  # noqa: E402

logger = logging.getLogger("bench_validation")

SCORE_SEED = 12345
"""Seed of the fresh scoring images (the family trains on seed 0's)."""
RANDOM_SEED = 777
"""Seed of the random dictionary."""
SHUFFLE_SEED = 0
SHORT = "10x shorter"
THREADS: dict[str, int] = {}
REUSED = {"trainings": 0, "ground truths": 0, "scorecards": 0}
"""Steps this run took from earlier runs under --work."""
"""Torch threads of each step (see `set_threads`)."""


@dataclasses.dataclass
class Sae:
    name: str
    config: str
    """The configuration it is one seed of (reseeds share it)."""
    path: pathlib.Path
    seconds: float = 0.0
    """Training time (when it was trained, for a reused run; 0 if unknown)."""
    train_eval: dict[str, Any] | None = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("benchmarks/.validation"))
    parser.add_argument("--n-images", type=int, default=3000, help="training images (the quickstart's 3,000)")
    parser.add_argument(
        "--score-images", type=int, default=600, help="fresh images to score on; 0: the training store"
    )
    parser.add_argument(
        "--n-train", type=int, default=3_000_000, help="training tokens (the short runs get a tenth)"
    )
    parser.add_argument("--resamples", type=int, default=50)
    parser.add_argument("--no-x16", action="store_true", help="leave out the 16x SAE (the slowest to train)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    work = args.work.resolve()
    phases: dict[str, float] = {}

    t = time.perf_counter()
    set_threads("images, stores")
    qcfg = quickstart.Config(
        out=work, n_images=args.n_images, n_train=args.n_train, seed=0, device=args.device
    )
    images = quickstart._generate(qcfg)
    store = quickstart._record(qcfg, images, builtin.DEFAULT)
    if args.score_images:
        scfg = quickstart.Config(
            out=work / "scoring", n_images=args.score_images, seed=SCORE_SEED, device=args.device
        )
        scoring = quickstart._record(scfg, quickstart._generate(scfg), builtin.DEFAULT)
    else:
        scoring = store
    shuffled = shuffled_store(store, work / "shuffled" / "shards")
    phases["images, stores"] = time.perf_counter() - t

    t = time.perf_counter()
    saes = train_family(qcfg, store, shuffled, work, x16=not args.no_x16)
    phases["training"] = time.perf_counter() - t

    t = time.perf_counter()
    dataset = synthetic.load(work / "images")
    set_threads("ground truth")
    for sae in saes:
        sae_truth = ground_truth(sae, store, qcfg.layer, dataset, work, args.device)
        sae.train_eval = (sae.train_eval or {}) | {"truth": sae_truth}
    phases["ground truth"] = time.perf_counter() - t

    t = time.perf_counter()
    settings = BenchSettings(resamples=args.resamples, device=args.device)
    cards = {sae.name: scorecard(sae, saes, scoring, settings, work) for sae in saes}
    phases["scorecards"] = time.perf_counter() - t

    truth = {sae.name: sae.train_eval["truth"]["mean_f1"] for sae in saes}
    family = family_table(saes, cards)
    rows, names, raw = validation_rows(saes, cards, truth)
    versus = versus_table(cards)
    wall = time.perf_counter() - started
    counts = sorted(set(THREADS.values()))
    machine = (
        f"{os.cpu_count()} CPU cores ({'-'.join(map(str, counts)) if counts else torch.get_num_threads()} "
        f"torch threads by the load average), Python {platform.python_version()}, "
        f"torch {torch.__version__}, device {args.device}"
    )
    scored_on = (
        f"{args.score_images} fresh images (seed {SCORE_SEED})" if args.score_images else "the training store"
    )
    header = (
        f"{len(saes)} SAEs trained on {args.n_images:,} images; scorecards on {scored_on} with "
        f"{args.resamples} resamples; {machine}; wall time {wall:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in phases.items())})"
    )
    if any(REUSED.values()):
        header += "; reused from earlier runs: " + ", ".join(f"{v} {k}" for k, v in REUSED.items() if v)
    text = "\n\n".join(
        [
            header,
            "The family (ground truth: mean best-latent F1 over the 12 concepts, held-out images):",
            family,
            "Each metric against ground truth (Spearman across SAEs; reseed noise = mean std across seeds / std across SAEs):",
            table(
                ["metric", "group", "better", "signed rho", "SAEs", "reseed noise", "verdict", "note"], rows
            ),
            "The quickstart SAE (seed 0) against the random dictionary and the 10x shorter run (seed 0); "
            "'beats' = its interval lies beyond the other's in the better direction:",
            versus,
        ]
    )
    print(text)
    values = "Every metric's value per SAE:\n\n" + values_table(saes, cards, [r[0] for r in rows[:-1]])
    (work / "validation.md").write_text(text + "\n\n" + values + "\n")
    write_json(
        work / "validation.json",
        {
            "settings": vars(args) | {"work": str(work)},
            "machine": machine,
            "wall_seconds": wall,
            "phases": phases,
            "reused": REUSED,
            "threads": THREADS,
            "saes": [
                {
                    "name": s.name,
                    "config": s.config,
                    "path": str(s.path),
                    "train_seconds": s.seconds,
                    "train_eval": s.train_eval,
                    "scorecard": cards[s.name],
                }
                for s in saes
            ],
            "metrics": raw,
            "validation": [dict(zip(names, row, strict=True)) for row in rows],
        },
    )
    print(f"\n{work / 'validation.md'}\n{work / 'validation.json'}")


def set_threads(step: str) -> None:
    """Threads for the next step, chosen as the `saev` command chooses them at its start (one per idle
    core by the 1-minute load average, or SAEV_THREADS), again before every step: the family takes
    many minutes and the machine's load changes. This process's own threads, busy until now, are
    taken out of the load first."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    mine = torch.get_num_threads() if THREADS else 0
    load = max(0.0, os.getloadavg()[0] - mine)
    choice = runtime.choose_threads(dict(os.environ), cores, load)
    torch.set_num_threads(choice.threads)
    THREADS[step] = choice.threads
    logger.info(
        "%s: %d thread(s) (%s, after taking out this process's %d)", step, choice.threads, choice.reason, mine
    )


# Making the family


def shuffled_store(store: ShardStore, dump_to: pathlib.Path) -> ShardStore:
    """A copy of `store` whose tokens had each dimension permuted independently (patches and [CLS]
    separately): every dimension's distribution is kept, which dimensions co-occur is destroyed."""
    marker = dump_to.parent / "store.json"
    if marker.exists():
        return open_shards(read_json(marker, "shuffled store")["path"])
    logger.info("writing the shuffled store")
    acts = np.stack([store.acts(i) for i in range(len(store))])  # [N, layers, tokens, d]
    rng = np.random.default_rng(SHUFFLE_SEED)
    cls = int(store.meta.cls_token)
    for layer in range(acts.shape[1]):
        for tokens in ([slice(0, cls)] if cls else []) + [slice(cls, None)]:
            flat = acts[:, layer, tokens].reshape(-1, acts.shape[-1])
            for d in range(flat.shape[1]):
                flat[:, d] = flat[rng.permutation(len(flat)), d]
            acts[:, layer, tokens] = flat.reshape(acts[:, layer, tokens].shape)
    meta = store.meta
    data = dict(meta.data) | {
        "shuffled": f"each dimension permuted across tokens (seed {SHUFFLE_SEED}) from {store.path.name}"
    }
    path = write_arrays(
        dump_to,
        acts,
        vit_family=meta.vit_family,
        vit_ckpt=meta.vit_ckpt,
        layers=meta.layers,
        cls_token=meta.cls_token,
        data=data,
        dtype=meta.dtype,
        max_patches_per_shard=meta.max_patches_per_shard,
        layout=store.layout,
    )
    write_json(marker, {"path": str(path)})
    return open_shards(path)


def train_family(
    qcfg: quickstart.Config, store: ShardStore, shuffled: ShardStore, work: pathlib.Path, *, x16: bool
) -> list[Sae]:
    base = quickstart._train_config(qcfg, store.path)
    plan: list[tuple[str, str, TrainConfig]] = []
    for s in (0, 1, 2):
        plan.append((f"quickstart s{s}", "quickstart", dataclasses.replace(base, seed=s, data_seed=s)))
    for s in (0, 1, 2):
        cfg = dataclasses.replace(base, seed=s, data_seed=s, n_train=base.n_train // 10)
        plan.append((f"{SHORT} s{s}", SHORT, cfg))
    plan.append(("k 4", "k 4", dataclasses.replace(base, k=4)))
    plan.append(("k 64", "k 64", dataclasses.replace(base, k=64)))
    plan.append(("2x wide", "2x wide", dataclasses.replace(base, exp_factor=2)))
    if x16:
        plan.append(("16x wide", "16x wide", dataclasses.replace(base, exp_factor=16)))
    plan.append(
        (
            "shuffled tokens",
            "shuffled tokens",
            dataclasses.replace(base, shards=shuffled.path, out=work / "shuffled" / "runs"),
        )
    )
    saes = []
    for name, config, cfg in plan:
        run_dir = cfg.out / cfg.run_id
        done = (run_dir / "sae.safetensors").exists() and (run_dir / "eval.json").exists()
        set_threads(f"train {name}")
        t = time.perf_counter()
        [result] = train(cfg)
        seconds = time.perf_counter() - t
        timing = work / "scores" / f"{slug(name)}.train.json"
        if done and timing.exists():  # reused: the time it took when it was trained
            seconds = read_json(timing, "training time")["seconds"]
        elif done:
            seconds = 0.0
        else:
            timing.parent.mkdir(parents=True, exist_ok=True)
            write_json(timing, {"run": str(run_dir), "seconds": seconds})
        REUSED["trainings"] += done
        logger.info("%s: %s (%.0f s)", name, result.checkpoint, seconds)
        ev = result.eval.summary() if result.eval else None
        saes.append(Sae(name, config, result.checkpoint, seconds, {"eval": ev}))
        if name == "quickstart s0":
            saes.append(random_dictionary(result.checkpoint, work / "random-dictionary" / "sae.safetensors"))
    # The random dictionary right after the shuffled run in the tables: the two "no concepts" SAEs.
    return [s for s in saes if s.name != "random dictionary"] + [
        s for s in saes if s.name == "random dictionary"
    ]


def random_dictionary(trained: pathlib.Path, path: pathlib.Path) -> Sae:
    """The trained SAE's configuration, normalisation and b_dec with random unit decoder rows, the
    encoder their transpose and b_enc zero: an SAE that learned nothing about the concepts."""
    if not path.exists():
        sae = checkpoints.load(trained)
        gen = torch.Generator().manual_seed(RANDOM_SEED)
        W_dec = torch.randn(sae.cfg.d_sae, sae.cfg.d_vit, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        with torch.no_grad():
            sae.W_dec.copy_(W_dec)
            sae.W_enc.copy_(W_dec.T)
            sae.b_enc.zero_()
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoints.dump(path, sae)
    return Sae("random dictionary", "random dictionary", path)


# Measuring


def ground_truth(
    sae: Sae, store: ShardStore, layer: int, dataset, work: pathlib.Path, device: str
) -> dict[str, Any]:
    cache = work / "scores" / f"{slug(sae.name)}.truth.json"
    key = _file_key(sae.path) | {"store": str(store.path)}
    if cache.exists() and (cached := read_json(cache, "ground truth"))["key"] == key:
        REUSED["ground truths"] += 1
        return cached["truth"]
    model = checkpoints.load(sae.path, device=device).eval()
    scores = concepts.score_store(model, store, layer, dataset, holdout=0.1, device=device)
    f1 = {s.concept: float(s.latent.f1) for s in scores}
    truth = {"mean_f1": float(np.mean(list(f1.values()))), "f1": f1}
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_json(cache, {"key": key, "truth": truth})
    return truth


def scorecard(
    sae: Sae, saes: list[Sae], store: ShardStore, settings: BenchSettings, work: pathlib.Path
) -> dict[str, Any]:
    """`saev bench`'s scorecard of one SAE as JSON, with the other seeds of its configuration as reseeds."""
    reseeds = [str(o.path) for o in saes if o.config == sae.config and o.name != sae.name]
    cache = work / "scores" / f"{slug(sae.name)}.card.json"
    key = _file_key(sae.path) | {
        "store": str(store.path),
        "reseeds": reseeds,
        "settings": {k: str(v) for k, v in dataclasses.asdict(settings).items()},
        "bench_source": _bench_source_hash(),
    }
    if cache.exists() and (cached := read_json(cache, "scorecard"))["key"] == key:
        REUSED["scorecards"] += 1
        return cached["card"]
    set_threads(f"score {sae.name}")
    try:
        card = score(str(sae.path), store, settings, reseeds=reseeds)
        forced = False
    except ConfigError as err:  # provenance refuses an SAE trained on another store's activations
        logger.warning("%s: %s; scoring with force=True", sae.name, err)
        card = score(str(sae.path), store, dataclasses.replace(settings, force=True), reseeds=reseeds)
        forced = True
    out = json.loads(json.dumps(card.to_json(), default=_plain)) | {"forced": forced}
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_json(cache, {"key": key, "card": out})
    return out


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _file_key(path: pathlib.Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _bench_source_hash() -> str:
    h = hashlib.sha256()
    for f in sorted(pathlib.Path(saev.bench.__file__).parent.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


# Tables


def _metrics(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in card["metrics"]}


def family_table(saes: list[Sae], cards: dict[str, dict[str, Any]]) -> str:
    rows = []
    for s in saes:
        ev = (s.train_eval or {}).get("eval") or {}
        fvu = _metrics(cards[s.name]).get("fvu", {}).get("value")
        rows.append(
            [
                s.name,
                f"{s.train_eval['truth']['mean_f1']:.3f}",
                "-" if fvu is None else f"{fvu:.4f}",
                "-" if not ev else f"{ev['fve']:.4f}",
                "-" if not ev else f"{ev['l0']:.1f}",
                f"{s.seconds:.0f}" if s.seconds else ("-" if not ev else "reused"),
                f"{cards[s.name]['seconds']:.0f}",
            ]
        )
    return table(
        [
            "SAE",
            "ground truth (mean F1)",
            "scorecard FVU",
            "training held-out FVE",
            "L0",
            "train s",
            "score s",
        ],
        rows,
    )


def validation_rows(saes: list[Sae], cards: dict[str, dict[str, Any]], truth: dict[str, float]):
    """The table's rows (text), their column names, and per metric the raw numbers in the form
    `saev.bench.report.validation()` reads ({"rho", "noise", "verdict", ...})."""
    names = ["metric", "group", "better", "signed_rho", "n_saes", "reseed_noise", "verdict", "note"]
    order: list[str] = []
    info: dict[str, dict[str, Any]] = {}
    for s in saes:
        for m in cards[s.name]["metrics"]:
            if m["name"] not in info:
                order.append(m["name"])
                info[m["name"]] = m
    seeded = {}
    for s in saes:
        seeded.setdefault(s.config, []).append(s.name)
    seeded = {c: ns for c, ns in seeded.items() if len(ns) > 1}
    rows = []
    raw: dict[str, dict[str, Any]] = {}
    for name in order:
        m = info[name]
        hib = m["higher_is_better"]
        values = {s.name: _metrics(cards[s.name]).get(name, {}).get("value") for s in saes}
        have = [n for n, v in values.items() if v is not None]
        x = np.array([values[n] for n in have], dtype=float)
        y = np.array([truth[n] for n in have], dtype=float)
        notes = []
        rho = math.nan
        if len(have) >= 3 and np.ptp(x) > 0:
            rho = float(scipy.stats.spearmanr(x, y).statistic)
            if hib is False:
                rho = -rho
        elif len(have) >= 3:
            notes.append("the same value for every SAE")
        spread = float(np.std(x, ddof=1)) if len(x) > 1 else math.nan
        within = [
            float(np.std([values[n] for n in ns], ddof=1))
            for ns in seeded.values()
            if all(values[n] is not None for n in ns)
        ]
        noise = float(np.mean(within)) / spread if within and spread > 0 else math.nan
        if m["group"] == "stability" and len(have) < len(saes):
            notes.append("seeds of one configuration compare the same decoders, so share a value")
        if len(have) < len(saes):
            missing = [n for n in values if values[n] is None]
            notes.append(
                f"only on {len(have)} SAEs" if len(missing) > 4 else "missing on " + ", ".join(missing)
            )
        if hib is None:
            verdict = "descriptive"
            notes.append("descriptive: raw rho")
        elif not math.isnan(rho) and rho >= 0.6 and not math.isnan(noise) and noise <= 0.5:
            verdict = "tracks"
        elif not math.isnan(rho) and 0.3 <= rho < 0.6:
            verdict = "weak"
        else:
            verdict = "fails"
            if not math.isnan(rho) and rho >= 0.6:
                notes.append("ranks well but reseed noise > 0.5")
        raw[name] = {
            "rho": None if math.isnan(rho) else round(rho, 4),
            "noise": None if math.isnan(noise) else round(noise, 4),
            "verdict": verdict,
            "n_saes": len(have),
            "higher_is_better": hib,
            "note": "; ".join(notes),
        }
        rows.append(
            [
                name,
                m["group"],
                {True: "higher", False: "lower", None: "-"}[hib],
                "-" if math.isnan(rho) else f"{rho:+.2f}",
                len(have),
                "-" if math.isnan(noise) else f"{noise:.2f}",
                verdict,
                "; ".join(notes),
            ]
        )
    gt = np.array(list(truth.values()))
    gt_noise = np.mean([np.std([truth[n] for n in ns], ddof=1) for ns in seeded.values()]) / np.std(
        gt, ddof=1
    )
    rows.append(
        ["(ground truth itself)", "-", "higher", "+1.00", len(gt), f"{gt_noise:.2f}", "-", "mean concept F1"]
    )
    return rows, names, raw


def values_table(saes: list[Sae], cards: dict[str, dict[str, Any]], metrics: list[str]) -> str:
    rows = [["ground truth"] + [f"{s.train_eval['truth']['mean_f1']:.3f}" for s in saes]]
    for name in metrics:
        row = [name]
        for s in saes:
            v = _metrics(cards[s.name]).get(name, {}).get("value")
            row.append("-" if v is None else f"{v:.3g}")
        rows.append(row)
    return table(["metric"] + [s.name for s in saes], rows)


def versus_table(cards: dict[str, dict[str, Any]]) -> str:
    mine = _metrics(cards["quickstart s0"])
    others = {
        "random dictionary": _metrics(cards["random dictionary"]),
        f"{SHORT} s0": _metrics(cards[f"{SHORT} s0"]),
    }
    rows = []
    for name, m in mine.items():
        hib = m["higher_is_better"]
        if hib is None:
            continue
        row = [name, "higher" if hib else "lower", _text(m)]
        row += [_text(o.get(name)) for o in others.values()]
        row += [_beats(m, o.get(name), hib) for o in others.values()]
        rows.append(row)
    return table(
        [
            "metric",
            "better",
            "quickstart s0",
            "random dictionary",
            f"{SHORT} s0",
            "beats random",
            "beats shorter",
        ],
        rows,
    )


def _text(m: dict[str, Any] | None) -> str:
    if m is None or m.get("value") is None:
        return "-"
    v, lo, hi = m["value"], m.get("low"), m.get("high")
    fmt = ".3f" if max(abs(x) for x in (v, lo or 0, hi or 0)) < 1000 else ".0f"
    return f"{v:{fmt}}" if lo is None or hi is None else f"{v:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def _beats(m: dict[str, Any], o: dict[str, Any] | None, hib: bool) -> str:
    if o is None or o.get("value") is None:
        return "- (not measured)"
    if None in (m.get("low"), m.get("high"), o.get("low"), o.get("high")):
        return "- (no interval)"
    if hib:
        return "yes" if m["low"] > o["high"] else ("no, worse" if m["high"] < o["low"] else "no, overlap")
    return "yes" if m["high"] < o["low"] else ("no, worse" if m["low"] > o["high"] else "no, overlap")


if __name__ == "__main__":
    main()

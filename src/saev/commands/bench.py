"""`saev bench`: a scorecard comparing SAEs metric by metric, each value with a bootstrap interval."""

import dataclasses
import pathlib
import sys

from saev.activations.recording import RecordConfig, record
from saev.bench.settings import BenchSettings
from saev.commands.base import Command
from saev.data.store import ShardStore, open_shards
from saev.errors import ConfigError
from saev.fileio import OutputFolder
from saev.nn import checkpoints

MAX_RESAMPLES = 10_000


@dataclasses.dataclass(frozen=True)
class Config(BenchSettings):
    """Score SAEs on one set of images: reconstruction, sparsity, spatial coherence, sparse probing,
    concept detection, monosemanticity, absorption, steering and stability, each with a 95% interval."""

    sae: tuple[str, ...] = ()
    """SAEs to compare: any format saev reads (path, hf://ORG/NAME, catalogue name)."""
    shards: pathlib.Path | None = None
    """Activation store of the images to score on (recorded at the SAEs' layer)."""
    images: str | None = None
    """Image folder (class subfolders give labels) to record first, instead of --shards; with
    --shards, where the store's images now are."""
    seeds_of: tuple[str, ...] = ()
    """Other seeds of the SAEs' configuration (run folders whose config.json differ only in seeds), for stability."""
    out: OutputFolder = pathlib.Path("bench")
    """Folder for report.json, index.html and frontier.png."""


@dataclasses.dataclass(frozen=True)
class Result:
    report: pathlib.Path
    table: str


def run(cfg: Config) -> Result:
    # The metrics import scikit-learn (1.8 s), which commands that never score should not pay for.
    from saev.bench.report import table, write
    from saev.bench.run import reseeds_of, score

    if not cfg.sae:
        raise ConfigError("give at least one --sae.")
    if cfg.shards is None and cfg.images is None:
        raise ConfigError("give --shards STORE, or --images DIR to record one first.")
    if not 10 <= cfg.resamples <= MAX_RESAMPLES:
        raise ConfigError(
            f"--resamples must be in [10, {MAX_RESAMPLES}] (an interval needs some; each costs a pass "
            f"over every metric's per-image sums), got {cfg.resamples}."
        )
    if cfg.batch_size < 1 or (cfg.max_images is not None and cfg.max_images < 10):
        raise ConfigError("--batch-size must be positive and --max-images at least 10.")
    store = open_shards(cfg.shards) if cfg.shards is not None else _record(cfg)
    override = cfg.images if cfg.shards is not None else None
    reseeds = reseeds_of(cfg.sae, cfg.seeds_of)
    settings = BenchSettings(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(BenchSettings)})
    cards = [score(s, store, settings, reseeds=reseeds[s], images_override=override) for s in cfg.sae]
    report = write(cards, cfg.out, {"store": str(store.path)} | _settings_json(settings))
    return Result(report, table(cards))


def _record(cfg: Config) -> ShardStore:
    """Record the first SAE's ViT and layer on --images into OUT/activations."""
    prov = checkpoints.load(cfg.sae[0]).provenance
    if prov.vit_family is None or prov.vit_ckpt is None or prov.layer is None:
        raise ConfigError(
            f"{cfg.sae[0]} does not record its ViT and layer; record a store with saev activations and pass --shards."
        )
    result = record(
        RecordConfig(
            vit_family=prov.vit_family,
            vit_ckpt=prov.vit_ckpt,
            images=str(cfg.images),
            dump_to=cfg.out / "activations",
            layers=(prov.layer,),
            device=cfg.device,
        )
    )
    return open_shards(result.path)


def _settings_json(settings: BenchSettings) -> dict:
    return {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in dataclasses.asdict(settings).items()}


def report(result: Result) -> None:
    print(result.table, file=sys.stderr)
    print(f"scorecard: {result.report.parent / 'index.html'}", file=sys.stderr)
    print(result.report)


COMMAND = Command(Config, run, report)

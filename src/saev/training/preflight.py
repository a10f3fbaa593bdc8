"""Checks made before any run trains: the options, the store, the output folders, memory, and which
run folders already hold a run (of this version or of an earlier one)."""

import contextlib
import dataclasses
import json
import logging
import math
import pathlib
from collections.abc import Iterator

from saev.data.layout import Tokens
from saev.data.store import ShardStore, open_shards
from saev.errors import ConfigError
from saev.fileio import check_output, existing_kind, read_json
from saev.options import available_memory, size_text
from saev.training import sweep
from saev.training.config import TrainConfig, varying_settings

EVAL_BATCH = 1024
"""Held-out tokens encoded at once."""
BYTES_PER_PARAMETER = 16
"""float32 weights, their gradients and Adam's two moments."""

logger = logging.getLogger("saev.training")


@dataclasses.dataclass(frozen=True)
class Checked:
    """The runs of a `saev train` call, checked, each in the folder it trains in, grouped by data stream."""

    groups: list[list[TrainConfig]]
    """Runs that read the same batches in the same order (one pass over the data each)."""
    stores: dict[pathlib.Path, ShardStore]


def check(base: TrainConfig) -> Checked:
    """Every run of `base` (expanded by its sweep file), checked before any trains; a run an earlier
    version began continues in its folder."""
    _check_out(base.out)
    cfgs = sweep.load(base)
    stores: dict[pathlib.Path, ShardStore] = {}
    varying = varying_settings(cfgs)
    for i, cfg in enumerate(cfgs):
        setting = ", ".join(f"{k} = {cfg.to_dict().get(k)!r}" for k in varying)
        with _in_sweep(base.sweep, f"the run with {setting or 'these settings'}: "):
            cfg.validate()
            resolved = cfg.resolved()
            if resolved.target_l0 != cfg.target_l0 and resolved.adapts_coefficient():
                logger.info(
                    "--arch %s without --sparsity-coeff or --target-l0: aiming at L0 %g, the default target "
                    "(the coefficient adapts to it during training)",
                    cfg.arch,
                    resolved.target_l0,
                )
            cfg = resolved
            if cfg.shards not in stores:  # opening verifies every shard file: once per store
                stores[cfg.shards] = open_shards(cfg.shards)
            store = stores[cfg.shards]
            cfg.validate_against(store)
            _check_data(cfg, store)
            cfgs[i] = run_folder(cfg)
    if any(cfg.wandb_project for cfg in cfgs):
        _require_wandb()
    ids = [cfg.run_id for cfg in cfgs]
    if len(set(ids)) != len(ids):
        raise ConfigError(
            "the sweep repeats a configuration: " + ", ".join(sorted({i for i in ids if ids.count(i) > 1}))
        )
    groups: dict[tuple, list[TrainConfig]] = {}
    for cfg in cfgs:
        groups.setdefault(cfg.stream, []).append(cfg)
    for group in groups.values():
        with _in_sweep(base.sweep):
            _check_memory(group, stores[group[0].shards].d_vit)
    return Checked(list(groups.values()), stores)


def run_folder(cfg: TrainConfig) -> TrainConfig:
    """`cfg`, or `cfg` resuming the folder an earlier version made for the same run (run ids then
    hashed every architecture's options, so that folder has another name); refuses a folder that holds
    another run, and one that holds this run without --resume."""
    run_dir = cfg.out / cfg.run_id
    if existing_kind(run_dir / "config.json") is None:
        earlier = _earlier_folder(cfg)
        if earlier is None:
            return cfg
        run_dir, cfg = earlier, cfg.resuming(earlier.name)
    elif not cfg.matches(_saved_config(run_dir / "config.json")):
        raise ConfigError(f"{run_dir} already holds a different run; choose another --out.")
    if not cfg.resume:
        raise ConfigError(
            f"{run_dir} already holds this run; pass --resume to continue it, or choose another --out."
        )
    return cfg


def _earlier_folder(cfg: TrainConfig) -> pathlib.Path | None:
    """A folder of OUT whose run record is this run under another id, if any."""
    if existing_kind(cfg.out) != "a folder":
        return None
    prefix = cfg.run_id.rsplit("-", 1)[0] + "-"  # the readable part of an id names the same settings
    for folder in sorted(cfg.out.glob(f"{glob_escape(prefix)}*")):
        record = folder / "config.json"
        if existing_kind(record) != "a file":
            continue  # never open a FIFO or a device to look inside
        try:
            saved = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(saved, dict) and isinstance(saved.get("config"), dict) and cfg.matches(saved["config"]):
            return folder
    return None


def glob_escape(text: str) -> str:
    """`text` matched literally by pathlib's glob (its special characters bracketed)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _saved_config(config_path: pathlib.Path) -> dict:
    record = read_json(config_path, "run record")
    saved = record.get("config") if isinstance(record, dict) else None
    if not isinstance(saved, dict):
        raise ConfigError(
            f"{config_path}: not a saev run record (no 'config' object); remove {config_path.parent} to "
            "start the run again, or choose another --out."
        )
    return saved


def split_images(cfg: TrainConfig, store: ShardStore) -> tuple[range, range]:
    """Training images and the held-out tail (the last `holdout` fraction by index)."""
    n = len(store)
    n_eval = math.ceil(cfg.holdout * n)
    if n - n_eval < 1:
        raise ConfigError(f"--holdout {cfg.holdout} leaves no training images in {store.path} ({n} images).")
    return range(0, n - n_eval), range(n - n_eval, n)


def tokens_per_img(store: ShardStore, tokens: Tokens) -> int:
    return store.token_view(tokens).n


@contextlib.contextmanager
def _in_sweep(sweep_file: pathlib.Path | None, which: str = "") -> Iterator[None]:
    """A ConfigError about runs of a sweep names the sweep file and `which` runs."""
    try:
        yield
    except ConfigError as err:
        if sweep_file is None:
            raise
        raise ConfigError(f"{sweep_file}: {which}{err}") from None


def _check_out(out: pathlib.Path) -> None:
    """Refuse an --out that is (or lies under) a file, or lies inside a run folder (a run in a run)."""
    existing = next((f for f in [out, *out.absolute().parents] if existing_kind(f) is not None), None)
    if existing is not None:
        check_output(existing, "folder", f"--out {out}: ")
    for folder in [out, *out.resolve().parents]:
        if existing_kind(folder / "config.json") != "a file":
            continue  # never open a FIFO or a device to look inside
        try:
            data = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "run_id" in data and "config" in data:
            raise ConfigError(
                f"--out {out} is inside the run folder {folder}; give the folder that holds the runs, e.g. {folder.parent}."
            )


def _check_data(cfg: TrainConfig, store: ShardStore) -> None:
    """The store holds at least one batch of training tokens, and --n-train at least one batch."""
    train_imgs, _ = split_images(cfg, store)
    per_img = tokens_per_img(store, cfg.tokens)
    if len(train_imgs) * per_img < cfg.batch_size:
        raise ConfigError(
            f"{store.path} has {len(train_imgs) * per_img:,} training tokens ({len(train_imgs)} images x "
            f"{per_img} {cfg.tokens} tokens, the held-out images left out), fewer than one batch of "
            f"--batch-size {cfg.batch_size}: use a smaller --batch-size or record more images."
        )
    if cfg.n_train < cfg.batch_size:
        raise ConfigError(f"--n-train {cfg.n_train} is less than one batch of --batch-size {cfg.batch_size}.")


def _check_memory(cfgs: list[TrainConfig], d_vit: int) -> None:
    """Refuse a pass over the data whose SAEs cannot fit on its device, before allocating any.

    The estimate is a lower bound: every SAE of the pass (weights, gradients and Adam's two moments,
    16 bytes per parameter) plus one step's activations: a training batch's pre-activations, codes and
    their gradient, or an evaluation batch's pre-activations and codes (the SAEs step one after another,
    so only the widest counts)."""
    first = cfgs[0]
    available = available_memory(first.device)
    if available is None:
        return
    free, what = available
    widths = [d_vit * cfg.exp_factor for cfg in cfgs]
    # 2 d_vit d_sae for W_enc and W_dec, 3 d_sae for b_enc and an architecture's per-latent weights;
    # 8 bytes per latent record when it last fired.
    models = sum(BYTES_PER_PARAMETER * (2 * d_vit * s + 3 * s + d_vit) + 8 * s for s in widths)
    step = 4 * (max(3 * first.batch_size, 2 * EVAL_BATCH) * max(widths) + 2 * first.batch_size * d_vit)
    if models + step <= free:
        return
    raise ConfigError(
        f"--exp-factor {max(cfg.exp_factor for cfg in cfgs)}: the {len(cfgs)} SAE(s) trained in one pass "
        f"need at least {size_text(models + step)} on {first.device} ({size_text(models)} of weights, gradients and "
        f"Adam moments for d_sae up to {max(widths):,}, {size_text(step)} for one step at --batch-size "
        f"{first.batch_size}), but it has {size_text(free)} of {what}: lower --exp-factor or --batch-size, or "
        "put fewer runs in the sweep."
    )


def _require_wandb() -> None:
    try:
        import wandb  # noqa: F401  # optional extra: checked only when asked for
    except ImportError:
        raise ConfigError("--wandb-project needs Weights & Biases: pip install -e '.[wandb]'.") from None

"""The training loop: every batch is read once and fed to every SAE that shares its data stream."""

import dataclasses
import json
import logging
import math
import pathlib
from collections.abc import Iterator

import torch
import tqdm
from jaxtyping import Float
from torch import Tensor

import saev
from saev.data.readers import iter_batches
from saev.data.statistics import store_normalization
from saev.data.store import ShardStore, open_shards
from saev.errors import ConfigError
from saev.fileio import atomic_open, write_json
from saev.nn import checkpoints
from saev.nn.config import Provenance
from saev.nn.evaluation import DEAD_DEFINITION, DENSE_DEFINITION, Accumulator, EvalResult
from saev.nn.modeling import SparseAutoencoder
from saev.nn.objectives import training_loss
from saev.normalization import ActNorm
from saev.training import schedules, sweep
from saev.training.config import NOT_IDENTITY, TrainConfig, varying_settings

logger = logging.getLogger("saev.training")
EVAL_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class RunResult:
    config: TrainConfig
    eval: EvalResult | None
    warnings: tuple[str, ...] = ()
    """What went wrong in a run that finished: see `run_warnings`."""

    @property
    def run_id(self) -> str:
        return self.config.run_id

    @property
    def path(self) -> pathlib.Path:
        """The run's folder."""
        return self.config.out / self.config.run_id

    @property
    def checkpoint(self) -> pathlib.Path:
        """Its sae.safetensors."""
        return self.path / "sae.safetensors"


DEAD_SHARE = 0.5
"""A run whose held-out dead latents exceed this share of its latents is flagged."""


def run_warnings(
    cfg: TrainConfig, result: EvalResult | None, n_steps: int, warmup: int, d_sae: int
) -> tuple[str, ...]:
    """Signs that a finished run learned little, each naming its likely cause."""
    out = []
    if warmup >= n_steps:
        out.append(
            f"the run ended inside its learning-rate warm-up ({n_steps} steps, warm-up {warmup}): the learning "
            "rate never reached its value; give more --n-train or a shorter --lr-warmup"
        )
    if result is not None and result.fve < 0:
        out.append(
            f"held-out FVE is {result.fve:.3f}: the SAE reconstructs worse than the mean activation; train longer "
            "(--n-train), or check the learning rate and sparsity settings"
        )
    if result is not None and result.n_dead > DEAD_SHARE * d_sae:
        out.append(
            f"{result.n_dead} of {d_sae} latents ({result.n_dead / d_sae:.0%}) are dead (fire on none of the "
            f"{result.n_tokens:,} held-out tokens): lower the sparsity penalty, raise --aux-k, or train longer"
        )
    return tuple(out)


def train(base: TrainConfig) -> list[RunResult]:
    """Train every configuration of `base` (expanded by its sweep file); checks everything first."""
    _check_out(base.out)
    cfgs = sweep.load(base)
    stores: dict[pathlib.Path, ShardStore] = {}
    for cfg in cfgs:
        cfg.validate()
        store = stores.setdefault(cfg.shards, open_shards(cfg.shards))
        cfg.validate_against(store)
        _split(cfg, store)
        _check_run_dir(cfg)
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
    if len(groups) > 1:
        logger.info("%d runs in %d data passes", len(cfgs), len(groups))
    results = []
    for group in groups.values():
        results += _train_group(group, stores[group[0].shards])
    return results


def _check_out(out: pathlib.Path) -> None:
    """Refuse an --out inside an existing run folder, which would nest a run in a run."""
    for folder in [out, *out.resolve().parents]:
        try:
            data = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "run_id" in data and "config" in data:
            raise ConfigError(
                f"--out {out} is inside the run folder {folder}; give the folder that holds the runs, e.g. {folder.parent}."
            )


def _split(cfg: TrainConfig, store: ShardStore) -> tuple[range, range]:
    """Training images and the held-out tail (the last `holdout` fraction by index)."""
    n = len(store)
    n_eval = math.ceil(cfg.holdout * n)
    if n - n_eval < 1:
        raise ConfigError(f"--holdout {cfg.holdout} leaves no training images in {store.path} ({n} images).")
    return range(0, n - n_eval), range(n - n_eval, n)


def _check_run_dir(cfg: TrainConfig) -> None:
    run_dir = cfg.out / cfg.run_id
    config_path = run_dir / "config.json"
    if not config_path.exists():
        return
    saved = json.loads(config_path.read_text()).get("config", {})
    mine = json.loads(json.dumps(cfg.to_dict()))
    if any(saved.get(k) != mine[k] for k in mine if k not in NOT_IDENTITY):
        raise ConfigError(f"{run_dir} already holds a different run; choose another --out.")
    if not cfg.resume:
        raise ConfigError(
            f"{run_dir} already holds this run; pass --resume to continue it, or choose another --out."
        )


def _require_wandb() -> None:
    try:
        import wandb  # noqa: F401  # optional extra: checked only when asked for
    except ImportError:
        raise ConfigError("--wandb-project needs Weights & Biases: pip install -e '.[wandb]'.") from None


class _Run:
    """One SAE being trained: model, optimizer, dead-latent tracker, logs and checkpoints."""

    def __init__(self, cfg: TrainConfig, store: ShardStore, norm: ActNorm, n_steps: int):
        self.cfg, self.n_steps = cfg, n_steps
        self.dir = cfg.out / cfg.run_id
        d_vit = store.d_vit
        prov = Provenance(
            store.meta.vit_family,
            store.meta.vit_ckpt,
            cfg.layer,
            cfg.tokens,
            store.meta.n_patches_per_img,
            f"saev {saev.__version__}",
        )
        self.sae = SparseAutoencoder(cfg.sae_config(d_vit), prov).to(cfg.device)
        self.sae.set_normalization(norm.to(cfg.device))
        self.objective = cfg.objective(d_vit)
        self.lr = cfg.learning_rate(d_vit)
        self.warmup = cfg.warmup_steps(n_steps)
        self.sparsity_warmup = cfg.sparsity_warmup_steps(n_steps)
        self.coeff = cfg.coefficient()
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=self.lr)
        self.last_fired = torch.zeros(self.sae.cfg.d_sae, dtype=torch.int64, device=cfg.device)
        self.step = 0
        self.done = (self.dir / "sae.safetensors").exists() and (self.dir / "eval.json").exists()
        self.last: dict[str, float] = {}
        self.wandb = None

    @property
    def ckpt_path(self) -> pathlib.Path:
        return self.dir / "checkpoint.pt"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.cfg.resume and self.ckpt_path.exists():
            state = torch.load(self.ckpt_path, map_location=self.cfg.device, weights_only=True)
            self.sae.load_state_dict(state["sae"])
            self.opt.load_state_dict(state["opt"])
            self.last_fired = state["last_fired"]
            self.step = state["step"]
            _truncate_metrics(self.dir / "metrics.jsonl", self.step)
            logger.info("%s: resuming at step %d of %d", self.cfg.run_id, self.step, self.n_steps)
        else:
            (self.dir / "metrics.jsonl").write_text("")
        write_json(
            self.dir / "config.json",
            {"run_id": self.cfg.run_id, "config": self.cfg.to_dict(), "sae": self.sae.cfg.to_dict()},
        )
        if self.cfg.wandb_project:
            import wandb  # optional extra, present once _require_wandb passed

            self.wandb = wandb.init(
                project=self.cfg.wandb_project,
                name=self.cfg.run_id,
                config=self.cfg.to_dict(),
                dir=str(self.dir),
                reinit="create_new",
            )

    def train_step(self, x_n: Float[Tensor, "batch d_vit"]) -> None:
        cfg = self.cfg
        if self.step == 0 and cfg.init_b_dec:
            with torch.no_grad():
                self.sae.b_dec.copy_(x_n.mean(0))
        lr = schedules.lr_at(self.step, self.lr, self.warmup, self.n_steps, cfg.lr_schedule)
        for group in self.opt.param_groups:
            group["lr"] = lr
        coeff = schedules.coeff_at(self.step, self.coeff, self.sparsity_warmup)
        dead = (self.step - self.last_fired) * cfg.batch_size >= cfg.dead_tokens
        per_token = self.step < int(cfg.architecture.per_token_warmup(cfg) * self.n_steps)
        with torch.autocast(x_n.device.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16"):
            out = training_loss(self.sae, x_n, coeff, dead, self.objective, per_token)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.sae.remove_parallel_grads()
        self.opt.step()
        self.sae.normalize_w_dec()
        self.step += 1
        self.last_fired[out.fired_S] = self.step
        if self.step % cfg.log_every == 0 or self.step == self.n_steps:
            self.last = {
                "step": self.step,
                "tokens": self.step * cfg.batch_size,
                "lr": lr,
                "sparsity_coeff": coeff,
                "loss": out.loss.item(),
                "mse": out.mse.item(),
                "l0": out.l0.item(),
                "l1": out.l1.item(),
                "sparsity": out.sparsity.item(),
                "aux": out.aux.item(),
                "dead_frac": dead.float().mean().item(),
            }
            with open(self.dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(self.last) + "\n")
            if self.wandb is not None:
                self.wandb.log(self.last, step=self.step)
        if self.step % cfg.ckpt_every == 0 and self.step < self.n_steps:
            self.save_checkpoint()

    def save_checkpoint(self) -> None:
        state = {
            "step": self.step,
            "sae": self.sae.state_dict(),
            "opt": self.opt.state_dict(),
            "last_fired": self.last_fired,
        }
        with atomic_open(self.ckpt_path) as f:
            torch.save(state, f)

    def finish(self, result: EvalResult | None) -> RunResult:
        checkpoints.dump(self.dir / "sae.safetensors", self.sae)
        summary = result.summary() if result else None
        write_json(self.dir / "eval.json", dataclasses.asdict(result) if result else {}, indent=None)
        write_json(
            self.dir / "config.json",
            {
                "run_id": self.cfg.run_id,
                "config": self.cfg.to_dict(),
                "sae": self.sae.cfg.to_dict(),
                "steps": self.step,
                "tokens": self.step * self.cfg.batch_size,
                "eval": summary,
            },
        )
        self.ckpt_path.unlink(missing_ok=True)
        if self.wandb is not None:
            self.wandb.summary.update(summary or {})
            self.wandb.finish()
        return self.result(result)

    def result(self, result: EvalResult | None) -> RunResult:
        warnings = run_warnings(self.cfg, result, self.n_steps, self.warmup, self.sae.cfg.d_sae)
        for warning in warnings:
            logger.warning("%s: %s", self.cfg.run_id, warning)
        return RunResult(self.cfg, result, warnings)


def _train_group(cfgs: list[TrainConfig], store: ShardStore) -> list[RunResult]:
    first = cfgs[0]
    train_imgs, eval_imgs = _split(first, store)
    n_steps = first.n_train // first.batch_size
    n_examples = len(train_imgs) * _tokens_per_img(store, first.tokens)
    if n_examples < first.batch_size:
        raise ConfigError(
            f"{store.path} has {n_examples:,} training tokens ({len(train_imgs)} images x "
            f"{_tokens_per_img(store, first.tokens)} {first.tokens} tokens, the held-out images left out), fewer "
            f"than one batch of --batch-size {first.batch_size}: use a smaller --batch-size or record more images."
        )
    if n_steps < 1:
        raise ConfigError(
            f"--n-train {first.n_train} is less than one batch of --batch-size {first.batch_size}."
        )
    norm = store_normalization(store, first.layer, first.tokens)
    runs = [_Run(cfg, store, norm, n_steps) for cfg in cfgs]
    for run in runs:
        if run.done:
            logger.info("%s: already finished, nothing to do", run.cfg.run_id)
        else:
            run.start()
    active = [run for run in runs if not run.done]
    if active:
        start = min(run.step for run in active)
        bar = tqdm.tqdm(
            total=n_steps,
            initial=start,
            unit="tok",
            unit_scale=first.batch_size,
            desc=f"training {len(active)} SAE(s)",
            dynamic_ncols=True,
        )
        device_norm = norm.to(first.device)
        # The bar's dead latents fire on none of the last --dead-tokens training tokens (AuxK's window).
        dead_label = f"dead (silent for {first.dead_tokens:,} tok)"
        step = start
        for batch in _stream(store, first, train_imgs, start, n_steps):
            x_n = device_norm.apply(batch["act"].to(first.device, non_blocking=True))
            for run in active:
                if run.step == step:  # runs resumed from a later checkpoint wait for the stream to reach them
                    run.train_step(x_n)
            step += 1
            bar.update(1)
            if active[0].last:
                m = active[0].last
                bar.set_postfix(
                    {"mse": f"{m['mse']:.4g}", "l0": f"{m['l0']:.1f}", dead_label: f"{m['dead_frac']:.1%}"},
                    refresh=False,
                )
        bar.close()
    results = _evaluate(runs, store, first, eval_imgs, norm)
    return [
        run.finish(res) if not run.done else _finished(run) for run, res in zip(runs, results, strict=True)
    ]


def _finished(run: _Run) -> RunResult:
    data = json.loads((run.dir / "eval.json").read_text())
    return run.result(EvalResult(**data) if data else None)


def _tokens_per_img(store: ShardStore, tokens: str) -> int:
    return store.token_view(tokens).n


def _stream(
    store: ShardStore, cfg: TrainConfig, images: range, start: int, n_steps: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled batches, one epoch after another (epoch e shuffled with seed (data_seed, e))."""
    per_epoch = len(images) * _tokens_per_img(store, cfg.tokens) // cfg.batch_size
    step = start
    while step < n_steps:
        epoch, within = divmod(step, per_epoch)
        for batch in iter_batches(
            store,
            cfg.layer,
            cfg.tokens,
            cfg.batch_size,
            shuffle=True,
            seed=(cfg.data_seed, epoch),
            images=images,
            drop_last=True,
            start_batch=within,
        ):
            yield batch
            step += 1
            if step == n_steps:
                return


def _evaluate(
    runs: list[_Run], store: ShardStore, cfg: TrainConfig, images: range, norm: ActNorm
) -> list[EvalResult | None]:
    pending = [run for run in runs if not run.done]
    if not images or not pending:
        return [None] * len(runs)
    for run in pending:
        run.sae.eval()
    accs = {id(run): Accumulator(run.sae) for run in pending}
    device_norm = norm.to(cfg.device)
    for batch in iter_batches(store, cfg.layer, cfg.tokens, EVAL_BATCH, shuffle=False, images=images):
        x_n = device_norm.apply(batch["act"].to(cfg.device))
        for acc in accs.values():
            acc.add(x_n)
    return [accs[id(run)].result() if id(run) in accs else None for run in runs]


def _truncate_metrics(path: pathlib.Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in lines))


def results_table(results: list[RunResult]) -> str:
    """Held-out metrics per run, with a column for every setting that differs between the runs,
    what dead and dense mean, and each run's warnings."""
    settings = [r.config.to_dict() for r in results]
    varying = varying_settings([r.config for r in results])
    headers = ["run", *varying, "MSE", "FVE", "L0", "dead", "dense"]
    rows = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r, setting in zip(results, settings, strict=True):
        e = r.eval
        metrics = (
            ["-"] * 5 if e is None else [f"{e.mse:.4g}", f"{e.fve:.3f}", f"{e.l0:.1f}", e.n_dead, e.n_dense]
        )
        rows.append(
            "| " + " | ".join(str(v) for v in [r.run_id, *(setting[k] for k in varying), *metrics]) + " |"
        )
    n_tokens = next((r.eval.n_tokens for r in results if r.eval is not None), None)
    if n_tokens is not None:
        rows.append(f"{DEAD_DEFINITION} (here the {n_tokens:,} held-out tokens); {DENSE_DEFINITION}.")
    rows += [f"warning, {r.run_id}: {w}" for r in results for w in r.warnings]
    return "\n".join(rows)

"""The training loop: every batch is read once and fed to every SAE that shares its data stream."""

import dataclasses
import json
import logging
import math
import pathlib
import pickle
import zipfile
from collections.abc import Iterator
from typing import Any

import torch
import tqdm
from jaxtyping import Float
from torch import Tensor

import saev
from saev import distributed
from saev.data.readers import iter_batches
from saev.data.statistics import store_normalization
from saev.data.store import ShardStore
from saev.errors import ConfigError, TrainingError
from saev.fileio import (
    atomic_open,
    check_input,
    check_output,
    existing_kind,
    naming_errors,
    read_text,
    write_json,
)
from saev.nn import checkpoints
from saev.nn.config import Provenance
from saev.nn.evaluation import Accumulator, EvalResult
from saev.nn.modeling import SparseAutoencoder
from saev.nn.objectives import training_loss
from saev.normalization import ActNorm
from saev.training import preflight, schedules, sparsity
from saev.training.config import TrainConfig
from saev.training.results import RunResult, run_warnings

logger = logging.getLogger("saev.training")


def train(base: TrainConfig) -> list[RunResult]:
    """Train every configuration of `base` (expanded by its sweep file); checks everything first."""
    checked = preflight.check(base)
    groups, stores = checked.groups, checked.stores
    # Statistics first, for every pass: a store they refuse stops the sweep before any run trains.
    # Under torchrun rank 0 computes and caches them beside the store; the others then read the cache.
    world = distributed.current()
    if not world.main:
        distributed.barrier(patient=True)
    norms = [store_normalization(stores[g[0].shards], g[0].layer, g[0].tokens) for g in groups]
    if world.main:
        distributed.barrier(patient=True)
    if len(groups) > 1:
        logger.info("%d runs in %d data passes", sum(map(len, groups)), len(groups))
    results: list[RunResult] = []
    failures: list[TrainingError] = []
    for group, norm in zip(groups, norms, strict=True):
        done, failed = _train_parallel(group, stores[group[0].shards], norm)
        results += done
        failures += failed
    if failures:
        finished = (
            f"\n{len(results)} other run(s) finished; their sae.safetensors are written." if results else ""
        )
        raise TrainingError("\n".join(str(err) for err in failures) + finished)
    return results


def adam(sae: SparseAutoencoder, lr: float, fast: tuple[str, ...] = ()) -> torch.optim.Adam:
    """The SAEs' optimiser. The multi-tensor implementation gives bit-identical updates to the
    per-tensor one torch picks on CPU, with fewer passes over the weights (20% faster here).

    The parameters named in `fast` form a second group, trained at `sparsity.FAST_LR_FACTOR` times
    the rate (each group's `lr_scale`)."""
    if not fast:
        return torch.optim.Adam(sae.parameters(), lr=lr, foreach=True)
    named = dict(sae.named_parameters())
    groups = [
        {"params": [p for n, p in named.items() if n not in fast], "lr_scale": 1.0},
        {"params": [named[n] for n in fast], "lr_scale": sparsity.FAST_LR_FACTOR},
    ]
    return torch.optim.Adam(groups, lr=lr, foreach=True)


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
            dataset=store.meta.describe_data(),
        )
        self.sae = SparseAutoencoder(cfg.sae_config(d_vit), prov).to(cfg.device)
        self.sae.set_normalization(norm.to(cfg.device))
        self.objective = cfg.objective(d_vit)
        self.lr = cfg.learning_rate(d_vit)
        self.warmup = cfg.warmup_steps(n_steps)
        self.sparsity_warmup = cfg.sparsity_warmup_steps(n_steps)
        self.coeff = cfg.coefficient()
        self.controller = (
            sparsity.L0Controller(
                cfg.target_l0, self.coeff, sparsity.adapting_steps(n_steps, self.sparsity_warmup), cfg.device
            )
            if cfg.adapts_coefficient() and cfg.target_l0 is not None
            else None
        )
        fast = cfg.architecture.fast_parameters() if self.controller is not None else ()
        self.opt = adam(self.sae, self.lr, fast)
        self.last_fired = torch.zeros(self.sae.cfg.d_sae, dtype=torch.int64, device=cfg.device)
        self.step = 0
        self.saved_step: int | None = None
        """Step of the last checkpoint on disk, all of whose weights were finite."""
        self.done = (self.dir / "sae.safetensors").exists() and (self.dir / "eval.json").exists()
        self.last: dict[str, float] = {}
        self.wandb: Any = None  # a wandb Run when logging there (wandb is an optional extra)
        # Reading a loss on the host is free on the CPU, so a CPU run stops at its first bad batch. On
        # an accelerator it would be a sync per step: there the first non-finite step is recorded on
        # the device and read only when metrics or a checkpoint are written, which sync anyway.
        self.check_every_step = _checks_every_step(cfg.device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=cfg.device)
        self.world = distributed.current()
        self.writes = self.world.main
        """Whether this process writes the run's files (rank 0 of a data-parallel run)."""

    @property
    def ckpt_path(self) -> pathlib.Path:
        return self.dir / "checkpoint.pt"

    def start(self) -> None:
        metrics = self.dir / "metrics.jsonl"
        if self.cfg.resume and existing_kind(self.ckpt_path) is not None:
            self.resume_from(self.ckpt_path)
            logger.info("%s: resuming at step %d of %d", self.cfg.run_id, self.step, self.n_steps)
        if not self.writes:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        check_output(metrics)  # appended to below, never through atomic_open
        if self.saved_step is not None:
            with naming_errors(metrics):
                _truncate_metrics(metrics, self.step)
        else:
            metrics.write_text("")
        write_json(
            self.dir / "config.json",
            {"run_id": self.cfg.run_id, "config": self.cfg.to_dict(), "sae": self.sae.cfg.to_dict()},
        )
        if self.cfg.wandb_project and self.writes:
            import wandb  # optional extra, present once _require_wandb passed

            try:
                self.wandb = wandb.init(
                    project=self.cfg.wandb_project,
                    name=self.cfg.run_id,
                    config=self.cfg.to_dict(),
                    dir=str(self.dir),
                    reinit="create_new",
                )
            except wandb.errors.Error as err:
                raise ConfigError(
                    f"--wandb-project {self.cfg.wandb_project}: Weights & Biases did not start ({err}); run "
                    "`wandb login`, or set WANDB_MODE=offline to log locally."
                ) from None

    def resume_from(self, path: pathlib.Path) -> None:
        """Load the weights, Adam state, last-fired steps and step of a checkpoint written by
        `save_checkpoint`, each checked: a damaged or foreign file is a ConfigError saying so."""
        check_input(path, "training checkpoint")
        damaged = f"{path}: not a checkpoint of this run"
        advice = "restore it, or remove it to start the run again"
        try:
            state = torch.load(path, map_location=self.cfg.device, weights_only=True)
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"{path}: damaged checkpoint ({first[:200]}); {advice}.") from None
        if not isinstance(state, dict) or {"sae", "opt", "last_fired", "step"} - set(state):
            raise ConfigError(f"{damaged} (it lacks its weights, optimiser state or step); {advice}.")
        step, last_fired = state["step"], state["last_fired"]
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= self.n_steps:
            raise ConfigError(f"{damaged}: step {step!r} is not in 0..{self.n_steps}; {advice}.")
        d_sae = self.sae.cfg.d_sae
        if (
            not isinstance(last_fired, Tensor)
            or last_fired.shape != (d_sae,)
            or last_fired.is_floating_point()
        ):
            raise ConfigError(f"{damaged}: 'last_fired' must be {d_sae} integers; {advice}.")
        try:
            self.sae.load_state_dict(state["sae"])
            self.opt.load_state_dict(state["opt"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"{damaged} ({first[:300]}); {advice}.") from None
        if not all(torch.isfinite(t).all() for t in self.sae.state_dict().values() if t.is_floating_point()):
            raise ConfigError(f"{damaged}: its weights are not finite; {advice}.")
        if self.controller is not None:
            saved = state.get("controller")
            if (
                not isinstance(saved, Tensor)
                or saved.shape != self.controller.state.shape
                or not saved[0].isfinite()
            ):
                raise ConfigError(
                    f"{damaged}: it lacks the adapted sparsity coefficient ('controller'); {advice}."
                )
            self.controller.load(saved.to(self.controller.state))
        self.last_fired = last_fired.to(self.last_fired)
        self.step = self.saved_step = step

    def _start_at_target(self, x_n: Float[Tensor, "batch d_vit"]) -> None:
        """The start of a run with a target L0 (`training.sparsity`), from its first batch."""
        assert self.controller is not None
        if self.world.distributed:  # the whole batch, as one process reads it: every process's slice
            x_n = torch.cat(distributed.all_gather(x_n))
        with torch.no_grad():
            threshold_S = sparsity.firing_thresholds(self.sae.pre_acts(x_n), self.controller.target)
        self.cfg.architecture.start_at(self.sae, threshold_S)

    def train_step(self, x_n: Float[Tensor, "batch d_vit"]) -> None:
        """One optimiser step; a TrainingError, with nothing written, once the loss is non-finite."""
        cfg = self.cfg
        world = self.world
        if self.step == 0 and cfg.init_b_dec:
            with torch.no_grad():
                self.sae.b_dec.copy_(_batch_mean(x_n, world))
        if self.step == 0 and self.controller is not None:
            self._start_at_target(x_n)
        lr = schedules.lr_at(self.step, self.lr, self.warmup, self.n_steps, cfg.lr_schedule)
        for group in self.opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        base = self.coeff if self.controller is None else self.controller.coeff
        coeff = schedules.coeff_at(self.step, base, self.sparsity_warmup)
        dead = (self.step - self.last_fired) * cfg.batch_size >= cfg.dead_tokens
        per_token = self.step < int(cfg.architecture.per_token_warmup(cfg) * self.n_steps)
        with torch.autocast(x_n.device.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16"):
            out = training_loss(self.sae, x_n, coeff, dead, self.objective, per_token)
        loss = out.loss.detach()
        if world.distributed:  # every process must agree on whether the step failed, or they would part ways
            loss = distributed.all_reduce(loss.reshape(1).clone())[0]
        finite = torch.isfinite(loss)
        if self.check_every_step:
            if not finite:
                raise self.stopped(self.step + 1, "non-finite loss", x_n)
        else:
            self.first_bad = torch.where(finite | (self.first_bad >= 0), self.first_bad, self.step)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if world.distributed:
            _average_gradients(self.sae, world.size)
        self.sae.remove_parallel_grads()
        self.opt.step()
        self.sae.normalize_w_dec()
        if self.controller is not None:
            l0 = out.l0.detach()
            if world.distributed:  # every process adapts the same coefficient, to the whole batch's L0
                l0 = distributed.all_reduce(l0.reshape(1).clone())[0] / world.size
            self.controller.update(self.step, l0)
        self.step += 1
        fired_S = out.fired_S
        if world.distributed:  # a latent fired if it fired on any process's slice
            fired_S = distributed.all_reduce(fired_S.to(torch.uint8), "max").bool()
        self.last_fired[fired_S] = self.step
        if self.step % cfg.log_every == 0 or self.step == self.n_steps:
            self.check_recorded()
            terms = torch.stack([out.loss.detach(), out.mse, out.l0, out.l1, out.sparsity, out.aux]).float()
            if world.distributed:  # each process's terms are means over its equal slice of the batch
                terms = distributed.all_reduce(terms) / world.size
            loss, mse, l0, l1, sparsity, aux = terms.tolist()
            self.last = {
                "step": self.step,
                "tokens": self.step * cfg.batch_size,
                "lr": lr,
                "sparsity_coeff": float(coeff),
                "loss": loss,
                "mse": mse,
                "l0": l0,
                "l1": l1,
                "sparsity": sparsity,
                "aux": aux,
                "dead_frac": dead.float().mean().item(),
            }
            if not all(math.isfinite(v) for v in self.last.values()):
                raise self.stopped(self.step, "non-finite metrics", None)
            if self.writes:
                with naming_errors(self.dir / "metrics.jsonl"), open(self.dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(self.last) + "\n")
            if self.wandb is not None:
                self.wandb.log(self.last, step=self.step)
        # The last step's checkpoint lets a run whose evaluation fails be evaluated again with --resume.
        if self.step % cfg.ckpt_every == 0 or self.step == self.n_steps:
            self.save_checkpoint()

    def check_recorded(self) -> None:
        """Raise for a non-finite loss recorded on the device since the last check (see __init__)."""
        if not self.check_every_step and (bad := int(self.first_bad)) >= 0:
            raise self.stopped(bad + 1, "non-finite loss", None)

    def save_checkpoint(self) -> None:
        """Write checkpoint.pt, unless the weights are non-finite: the last good one then stays."""
        self.check_recorded()
        weights = [t for t in self.sae.state_dict().values() if t.is_floating_point()]
        if not torch.stack([torch.isfinite(t).all() for t in weights]).all():
            raise self.stopped(self.step, "non-finite weights", None)
        state = {
            "step": self.step,
            "sae": self.sae.state_dict(),
            "opt": self.opt.state_dict(),
            "last_fired": self.last_fired,
        }
        if self.controller is not None:
            state["controller"] = self.controller.state
        if self.writes:  # every process holds the same state
            with atomic_open(self.ckpt_path) as f:
                torch.save(state, f)
        self.saved_step = self.step

    def stopped(self, step: int, what: str, x_n: Tensor | None) -> TrainingError:
        """The error for a run stopped at `step` (1-based) by `what`; `x_n` is the batch, where known."""
        cfg = self.cfg
        if x_n is None:
            cause = f"NaN in the store {cfg.shards}, or diverging training (lower --lr)"
        elif not torch.isfinite(x_n).all():
            cause = f"the batch holds NaN activations: repair the store {cfg.shards}"
        else:
            cause = f"the batch's activations are finite, so training diverged: lower --lr (now {self.lr:g})"
        if self.saved_step is None:
            resume = "no checkpoint was written yet; rerun with --resume to start it again"
        else:
            resume = (
                f"its last good checkpoint (step {self.saved_step}, {self.ckpt_path}) is intact; rerun with "
                "--resume to continue from it"
            )
        return TrainingError(
            f"{cfg.run_id}: {what} at step {step} of {self.n_steps} ({step * cfg.batch_size:,} training "
            f"tokens seen): {cause}; {resume}."
        )

    def finish(self, result: EvalResult | None) -> RunResult:
        if self.controller is not None:  # the checkpoint names the coefficient its weights settled under
            self.sae.cfg = dataclasses.replace(self.sae.cfg, sparsity_coeff=float(self.controller.coeff))
        checkpoints.dump(self.dir / "sae.safetensors", self.sae)
        summary = result.summary() if result else None
        coeff = {"sparsity_coeff": self.sae.cfg.sparsity_coeff} if self.cfg.architecture.default_coeff else {}
        write_json(self.dir / "eval.json", result.to_json() | coeff if result else {}, indent=None)
        write_json(
            self.dir / "config.json",
            {
                "run_id": self.cfg.run_id,
                "config": self.cfg.to_dict(),
                "sae": self.sae.cfg.to_dict(),
                "steps": self.step,
                "tokens": self.step * self.cfg.batch_size,
                "eval": summary,
            }
            | coeff,
        )
        self.ckpt_path.unlink(missing_ok=True)
        if self.wandb is not None:
            self.wandb.summary.update(summary or {})
            self.wandb.finish()
        return self.result(result)

    def result(self, result: EvalResult | None) -> RunResult:
        warnings = run_warnings(self.cfg, result, self.n_steps, self.warmup, self.sae.cfg.d_sae)
        for warning in warnings if self.writes else ():
            logger.warning("%s: %s", self.cfg.run_id, warning)
        return RunResult(self.cfg, result, warnings)


def _train_parallel(
    cfgs: list[TrainConfig], store: ShardStore, norm: ActNorm
) -> tuple[list[RunResult], list[TrainingError]]:
    """`_train_group` under torchrun: each rank trains its share of the runs (`--split runs`) or a slice
    of every batch (`--split batch`); every rank returns every run's result, in the sweep's order."""
    world = distributed.current()
    if world.distributed and cfgs[0].split == "runs":
        mine = [cfg for i, cfg in enumerate(cfgs) if i % world.size == world.rank]
        with distributed.alone():
            done, failed = _train_group(mine, store, norm) if mine else ([], [])
        everyone = distributed.gather((done, [str(err) for err in failed]), patient=True)
        by_id = {r.run_id: r for part, _ in everyone for r in part}
        results = [by_id[cfg.run_id] for cfg in cfgs if cfg.run_id in by_id]
        return results, [TrainingError(msg) for _, errs in everyone for msg in errs]
    # Every rank ends with the same weights and the same (reduced) evaluation; rank 0 writes them.
    return _train_group(cfgs, store, norm)


def _train_group(
    cfgs: list[TrainConfig], store: ShardStore, norm: ActNorm
) -> tuple[list[RunResult], list[TrainingError]]:
    """Train and evaluate runs that share a data stream; the finished runs, and why others stopped."""
    first = cfgs[0]
    train_imgs, eval_imgs = preflight.split_images(first, store)
    n_steps = first.n_train // first.batch_size
    runs = [_Run(cfg, store, norm, n_steps) for cfg in cfgs]
    for run in runs:
        if run.done:
            logger.info("%s: already finished, nothing to do", run.cfg.run_id)
        else:
            run.start()
    active = [run for run in runs if not run.done]
    failures: dict[int, TrainingError] = {}
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
        world = distributed.current()
        for batch in _stream(store, first, train_imgs, start, n_steps):
            # Each rank trains on its slice of the global batch (all of it in one process).
            share = distributed.split(len(batch["act"]), world.size)[world.rank]
            x_n = device_norm.apply(
                batch["act"][share.start : share.stop].to(first.device, non_blocking=True)
            )
            for run in active:
                if run.step == step:  # runs resumed from a later checkpoint wait for the stream to reach them
                    try:
                        run.train_step(x_n)
                    except TrainingError as err:
                        # One diverging run (say, the sweep's highest learning rate) leaves the others be.
                        failures[id(run)] = err
            active = [run for run in active if id(run) not in failures]
            if not active:
                break
            step += 1
            bar.update(1)
            distributed.progress()
            if active[0].last:
                m = active[0].last
                bar.set_postfix(
                    {"mse": f"{m['mse']:.4g}", "l0": f"{m['l0']:.1f}", dead_label: f"{m['dead_frac']:.1%}"},
                    refresh=False,
                )
        bar.close()
    trained = [run for run in runs if not run.done and id(run) not in failures]
    evals = dict(zip(map(id, trained), _evaluate(trained, store, first, eval_imgs, norm), strict=True))
    results = [
        (run.finish(evals[id(run)]) if run.writes else run.result(evals[id(run)]))
        if id(run) in evals
        else _finished(run)
        for run in runs
        if id(run) not in failures
    ]
    return results, list(failures.values())


def _batch_mean(x_BD: Float[Tensor, "batch d_vit"], world: distributed.World) -> Float[Tensor, " d_vit"]:
    """Mean over the whole batch: every process's equal slice of it under torchrun."""
    if not world.distributed:
        return x_BD.mean(0)
    return distributed.all_reduce(x_BD.sum(0)) / (len(x_BD) * world.size)


def _average_gradients(sae: SparseAutoencoder, n: int) -> None:
    """Average every gradient over the processes in one all-reduce (one bucket, as DDP does; the loss
    reads the SAE's weights directly, not through `forward`, so DDP's hooks would not fire)."""
    params = [p for p in sae.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = distributed.all_reduce(torch.cat([g.reshape(-1) for g in grads])).div_(n)
    for p, chunk in zip(params, flat.split([g.numel() for g in grads]), strict=True):
        p.grad = chunk.view_as(p)


def _finished(run: _Run) -> RunResult:
    data = json.loads((run.dir / "eval.json").read_text())
    return run.result(EvalResult.from_json(data) if data else None)


def _stream(
    store: ShardStore, cfg: TrainConfig, images: range, start: int, n_steps: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled batches, one epoch after another (epoch e shuffled with seed (data_seed, e))."""
    per_epoch = len(images) * preflight.tokens_per_img(store, cfg.tokens) // cfg.batch_size
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
    """Each run's held-out metrics (None without held-out images); refuses non-finite activations.

    Under torchrun each rank evaluates a contiguous share of the held-out images and the running sums
    are added up, so every rank gets the metrics of all of them."""
    if not images or not runs:
        return [None] * len(runs)
    for run in runs:
        run.sae.eval()
    accs = [Accumulator(run.sae) for run in runs]
    device_norm = norm.to(cfg.device)
    world = distributed.current()
    share = distributed.split(len(images), world.size)[world.rank]
    mine = range(images.start + share.start, images.start + share.stop)
    bad: list[int] = []
    for batch in (
        iter_batches(store, cfg.layer, cfg.tokens, preflight.EVAL_BATCH, shuffle=False, images=mine)
        if mine
        else ()
    ):
        x_n = device_norm.apply(batch["act"].to(cfg.device))
        finite = torch.isfinite(x_n).all(dim=1)
        if not finite.all():
            bad = sorted(set(batch["image_i"][~finite.cpu()].tolist()))
            break
        for acc in accs:
            acc.add(x_n)
        distributed.progress()
    bad = sorted(i for rank_bad in distributed.gather(bad) for i in rank_bad)
    if bad:
        raise TrainingError(
            f"final evaluation: held-out activations are non-finite (NaN) in image(s) {bad[:10]} of "
            f"{store.path}, layer {cfg.layer}; the trained weights are in each run's checkpoint.pt: "
            "repair the store and rerun with --resume to evaluate them."
        )
    for acc in accs:
        acc.reduce()
    return [acc.result() for acc in accs]


def _truncate_metrics(path: pathlib.Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from."""
    if existing_kind(path) is None:
        return
    lines, damaged = [], 0
    for line in read_text(path, "metrics log").splitlines():
        logged = _logged_step(line)
        damaged += logged is None and bool(line.strip())
        if logged is not None and logged <= step:
            lines.append(line)
    if damaged:
        logger.warning("%s: dropped %d line(s) that are not metrics records", path, damaged)
    with atomic_open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


def _logged_step(line: str) -> int | None:
    """The step of a metrics.jsonl line; None for a line that is not a metrics record."""
    try:
        logged = json.loads(line)
    except (ValueError, RecursionError):
        return None
    step = logged.get("step") if isinstance(logged, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _checks_every_step(device: str) -> bool:
    """Whether runs on `device` check their loss at every step (see _Run.__init__)."""
    return torch.device(device).type == "cpu"

"""A finished run: its config and held-out metrics, the warnings it earned, and the table of a sweep."""

import dataclasses
import math
import pathlib

from saev.nn.evaluation import DEAD_DEFINITION, DENSE_DEFINITION, EvalResult
from saev.training import sparsity
from saev.training.config import TrainConfig, varying_settings


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
L0_TOLERANCE = 0.1
"""A run with a target L0 whose held-out L0 is further from it than this (relative) is warned about."""
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
    if result is not None and math.isnan(result.fve):
        out.append(
            f"held-out FVE is undefined: the {result.n_tokens:,} held-out activations are all equal (no variance); "
            "check the store (a constant or blank image set) or its held-out images"
        )
    target = cfg.target_l0
    if (
        result is not None
        and cfg.adapts_coefficient()
        and target
        and abs(result.l0 / target - 1) > L0_TOLERANCE
    ):
        adapted = len(sparsity.adapting_steps(n_steps, cfg.sparsity_warmup_steps(n_steps)))
        out.append(
            f"held-out L0 is {result.l0:.1f}, {abs(result.l0 / target - 1):.0%} "
            f"{'above' if result.l0 > target else 'below'} the target {target:g}: the coefficient adapted for "
            f"{adapted} steps; train longer (--n-train), or start it nearer with --sparsity-coeff"
        )
    if result is not None and result.n_dead > DEAD_SHARE * d_sae:
        out.append(
            f"{result.n_dead} of {d_sae} latents ({result.n_dead / d_sae:.0%}) are dead (fire on none of the "
            f"{result.n_tokens:,} held-out tokens): lower the sparsity penalty, raise --aux-k, or train longer"
        )
    return tuple(out)


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
            "| "
            + " | ".join(str(v) for v in [r.run_id, *(setting.get(k, "-") for k in varying), *metrics])
            + " |"
        )
    n_tokens = next((r.eval.n_tokens for r in results if r.eval is not None), None)
    if n_tokens is not None:
        rows.append(f"{DEAD_DEFINITION} (here the {n_tokens:,} held-out tokens); {DENSE_DEFINITION}.")
    rows += [f"warning, {r.run_id}: {w}" for r in results for w in r.warnings]
    return "\n".join(rows)

"""`saev evaluate`: spliced reconstruction. Replace an SAE's layer by its reconstruction and
measure what the model's heads keep, beside zero and mean ablation."""

import dataclasses
import pathlib
import sys
from typing import Annotated

import torch
import tyro

from saev.commands.base import Command, SplicedOptions
from saev.errors import ConfigError
from saev.fileio import OutputFolder, write_json
from saev.steering import inputs
from saev.steering.effects import number
from saev.steering.reconstruction import SpliceEvaluation, evaluate_splice


@dataclasses.dataclass(frozen=True)
class Config(SplicedOptions):
    """Replace the SAE's layer by its reconstruction and score the model's heads (clean, spliced, zero- and mean-ablated)."""

    images: Annotated[tuple[pathlib.Path, ...], tyro.conf.Positional]
    """Image files or folders (searched recursively); class subfolders or a saev.synthetic folder give labels."""
    out: OutputFolder = pathlib.Path("evaluate")
    """Folder for report.json."""


@dataclasses.dataclass(frozen=True)
class Result:
    report: pathlib.Path
    evaluations: list[SpliceEvaluation]
    skipped: dict[str, str]


def run(cfg: Config) -> Result:
    spliced, transform, heads = cfg.spliced()
    sae = spliced.sae
    paths = inputs.image_files(cfg.images)
    skipped: dict[str, str] = {}
    mean_D = sae.act_mean
    if mean_D is None:
        batches = (b.x_B3HW for b in inputs.load_batches(paths, transform, cfg.batch_size, {}))
        mean_D = _mean_activation(spliced, batches)
    evaluations = []
    for head in heads:
        labels = inputs.labels_for(paths, head.classes, spliced.vit.layout.grid)
        evaluations.append(
            evaluate_splice(
                spliced, head, _labelled(paths, transform, cfg.batch_size, labels, head, skipped), mean_D
            )
        )
    cfg.out.mkdir(parents=True, exist_ok=True)
    report = cfg.out / "report.json"
    write_json(
        report, {"sae": cfg.sae, "evaluations": [e.to_dict() for e in evaluations], "skipped": skipped}
    )
    return Result(report, evaluations, skipped)


def _mean_activation(spliced, batches) -> torch.Tensor:
    total, n = torch.zeros(spliced.vit.d_vit, dtype=torch.float64, device=spliced.device), 0
    for x in batches:
        read = spliced.prefix(x).tokens_BTD[:, spliced.index_N]
        total += read.double().sum((0, 1))
        n += read.shape[0] * read.shape[1]
    return (total / max(n, 1)).float()


def _labelled(paths, transform, batch_size, labels, head, skipped):
    """Image batches with their labels in the head's terms, or None where the images have none."""
    for batch in inputs.load_batches(paths, transform, batch_size, skipped):
        idx = [paths.index(p) for p in batch.paths]
        if labels is None or (head.kind == "patch" and labels.patch_NPC is None):
            yield batch.x_B3HW, None
            continue
        rows = labels.patch_NPC[idx] if head.kind == "patch" else labels.image_NC[idx]
        if not head.multilabel and not (rows.sum(-1) == 1).all():
            # argmax would score such a unit against the head's first class.
            odd = next(p for p, r in zip(batch.paths, rows, strict=True) if not (r.sum(-1) == 1).all())
            raise ConfigError(
                f"{odd}: its labels give some {'patches' if head.kind == 'patch' else 'images'} no class (or "
                f"several) of head {head.name}, which predicts exactly one of {', '.join(head.classes)}; give "
                "images of those classes only, or none with labels to compare with the clean predictions."
            )
        yield batch.x_B3HW, rows.float() if head.multilabel else rows.float().argmax(-1)


def report(result: Result) -> None:
    for ev in result.evaluations:
        print(f"head {ev.head} ({ev.n_units} units, labels: {ev.labels})", file=sys.stderr)
        print(ev.table(), file=sys.stderr)
        print(
            f"recovered: {number(ev.recovered_zero, '.4f')} against zero ablation, "
            f"{number(ev.recovered_mean, '.4f')} against mean ablation; FVE {number(ev.fve, '.4f')}, L0 {ev.l0:.1f}",
            file=sys.stderr,
        )
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s)", file=sys.stderr)
    print(result.report)


COMMAND = Command(Config, run, report)

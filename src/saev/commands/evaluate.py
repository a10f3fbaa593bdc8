"""`saev evaluate`: spliced reconstruction. Replace an SAE's layer by its reconstruction and
measure what the model's heads keep, beside zero and mean ablation."""

import dataclasses
import pathlib
import sys
from typing import Annotated

import tyro

from saev.commands.base import Command, SplicedOptions
from saev.fileio import OutputFolder, write_json
from saev.steering import inputs
from saev.steering.effects import number
from saev.steering.reconstruction import SpliceEvaluation, evaluate_splice, labelled_batches, mean_activation


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
    paths = inputs.image_files(cfg.images)
    skipped: dict[str, str] = {}
    mean_D = spliced.sae.act_mean
    if mean_D is None:
        batches = (b.x_B3HW for b in inputs.load_batches(paths, transform, cfg.batch_size, {}))
        mean_D = mean_activation(spliced, batches, len(paths))
    evaluations = []
    for head in heads:
        labels = inputs.labels_for(paths, head.classes, spliced.vit.layout.grid)
        labelled = labelled_batches(paths, transform, cfg.batch_size, labels, head, skipped)
        evaluations.append(evaluate_splice(spliced, head, labelled, mean_D, len(paths)))
    cfg.out.mkdir(parents=True, exist_ok=True)
    report = cfg.out / "report.json"
    write_json(
        report, {"sae": cfg.sae, "evaluations": [e.to_dict() for e in evaluations], "skipped": skipped}
    )
    return Result(report, evaluations, skipped)


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

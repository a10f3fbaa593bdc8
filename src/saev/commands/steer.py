"""`saev steer`: change SAE latents inside the running ViT and compare its predictions before and
after, image by image, or (`--evaluate`) measure per class whether suppressing a latent removes
exactly that class."""

import dataclasses
import pathlib
import sys
from typing import Annotated

import tyro

from saev.commands.base import Command, SplicedOptions
from saev.explorer.pictures import edit_picture
from saev.fileio import OutputFolder, write_json
from saev.steering import comparison, effects, inputs
from saev.steering.edits import Where, parse_edit


@dataclasses.dataclass(frozen=True)
class Config(SplicedOptions):
    """Edit SAE latents inside the ViT and compare the head's predictions before and after."""

    images: Annotated[tuple[pathlib.Path, ...], tyro.conf.Positional]
    """Image files or folders (searched recursively)."""
    edit: tuple[str, ...] = ()
    """Edits: LATENT=V sets, LATENT=+V adds, LATENT=*V scales; Vx means V times the latent's largest activation (686=-1x suppresses 686)."""
    where: Where = "all"
    """Edit every token the SAE reads, or only where the latent fires (active)."""
    patches: str | None = None
    """Edit only these patches (comma-separated row-major indices, e.g. 10,11,26)."""
    visuals: pathlib.Path | None = None
    """A saev visuals output folder: its latents' largest activations give the x units (default: the largest over these images)."""
    evaluate: bool = False
    """Measure, for each class, the change rates of suppressing its latent beside a random latent and a random direction."""
    latents: tuple[str, ...] = ()
    """With --evaluate: CLASS=LATENT pairs (default: each class's best detecting latent on the images' labels)."""
    value: float = -1.0
    """With --evaluate: each latent is set to this multiple of its largest activation where it fires."""
    out: OutputFolder = pathlib.Path("steer")
    """Folder for report.json and one PNG per image and head."""
    top: int = 3
    """Classes listed per image for classification heads."""
    show_class: str | None = None
    """Class whose presence the pictures of multi-label per-patch heads show before and after (default: on each image, the class whose presence changes most)."""
    seed: int = 0
    """Seed of the random baselines (--evaluate)."""


@dataclasses.dataclass(frozen=True)
class Result:
    report: pathlib.Path
    lines: list[str]
    """What the run prints: per image before/after, or the --evaluate tables."""
    skipped: dict[str, str]


def run(cfg: Config) -> Result:
    edits = [parse_edit(e) for e in cfg.edit]
    patches = comparison.parse_patches(cfg.patches)
    comparison.check_options(edits, cfg.evaluate, cfg.patches, cfg.latents, cfg.top, cfg.value)
    spliced, transform, heads = cfg.spliced()
    comparison.check_edits(spliced, heads, edits, patches, cfg.show_class, cfg.sae)
    paths = inputs.image_files(cfg.images)
    max_S = None
    if cfg.evaluate or any(e.relative for e in edits):
        max_S = comparison.max_activations(spliced, transform, paths, cfg.batch_size, cfg.visuals)
    cfg.out.mkdir(parents=True, exist_ok=True)
    report = cfg.out / "report.json"
    skipped: dict[str, str] = {}
    if cfg.evaluate and max_S is not None:  # always set with --evaluate: says so to the type checker
        tests = effects.evaluate_classes(
            spliced,
            transform,
            heads,
            paths,
            max_S,
            skipped,
            cfg.batch_size,
            latents=cfg.latents,
            value=cfg.value,
            seed=cfg.seed,
            where=cfg.sae,
        )
        tested = {"n_images": len(paths) - len(skipped), "tests": [t.to_dict() for t in tests]}
        write_json(report, {"sae": cfg.sae} | tested | {"skipped": skipped})
        return Result(report, [line for t in tests for line in t.lines()], skipped)
    how = comparison.Comparing(edits, cfg.where, patches, max_S, cfg.top, cfg.show_class)
    compared = comparison.compare_edits(
        spliced, transform, heads, paths, how, cfg.out, skipped, cfg.batch_size
    )
    lines = comparison.write_comparison(
        compared,
        lambda c: edit_picture(c.head, c.crop, spliced, c.before, c.after, c.delta_N, c.shown),
        report,
        {"sae": cfg.sae, "edits": [str(e) for e in edits], "where": cfg.where, "patches": patches},
        skipped,
    )
    return Result(report, lines, skipped)


def report(result: Result) -> None:
    for line in result.lines:
        print(line, file=sys.stderr)
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s)", file=sys.stderr)
    print(result.report)


COMMAND = Command(Config, run, report)

"""`saev steer`: change SAE latents inside the running ViT and compare its predictions before and
after, image by image, or (`--evaluate`) measure per class whether suppressing a latent removes
exactly that class."""

import dataclasses
import logging
import pathlib
import sys
from typing import Annotated, Any

import numpy as np
import torch
import tyro
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from saev.activations.transforms import visible_crop
from saev.commands.base import Command, SplicedOptions
from saev.errors import ConfigError
from saev.fileio import OutputFolder, save_image, write_json
from saev.steering import effects, inputs
from saev.steering.edits import Edit, Where, check_latents, describe, parse_edit
from saev.steering.heads import Head
from saev.steering.splice import SplicedVit
from saev.visuals.heatmap import Presence, steering_panels

logger = logging.getLogger("saev.steer")


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
    patches = _patch_list(cfg.patches)
    _validate(cfg, edits)
    spliced, transform, heads = cfg.spliced()
    _check_show_class(cfg, heads)
    check_latents(edits, spliced.sae.cfg.d_sae, cfg.sae)
    if patches is not None and spliced.tokens == "cls":
        raise ConfigError("--patches: the SAE reads only the [CLS] token here, so no patch can be edited.")
    spliced.eligible(patches)  # range check before any work
    paths = inputs.image_files(cfg.images)
    skipped: dict[str, str] = {}
    needs_max = cfg.evaluate or any(e.relative for e in edits)
    max_S = _max_activations(cfg, spliced, transform, paths) if needs_max else None
    cfg.out.mkdir(parents=True, exist_ok=True)
    if cfg.evaluate:
        return _evaluate(cfg, spliced, transform, heads, paths, max_S, skipped)
    records, lines = [], []
    # Two images (or heads) of the same name in other folders must not draw over each other.
    stems = dict(zip(paths, _unique([p.stem for p in paths]), strict=True))
    slugs = _unique([_slug(h.name) for h in heads])
    for batch in inputs.load_batches(paths, transform, cfg.batch_size, skipped):
        prefix = spliced.prefix(batch.x_B3HW)
        codes = spliced.edit(prefix, edits, where=cfg.where, patches=patches, max_S=max_S)
        before = spliced.finish(prefix.tokens_BTD)
        after = spliced.finish(spliced.tokens_with(prefix, codes), describe(edits))
        delta_BN = spliced.decode_delta(prefix.codes_BNS, codes).norm(dim=-1).cpu()
        for h, slug in zip(heads, slugs, strict=True):
            lb, la = h.logits(before).cpu(), h.logits(after).cpu()
            for i, path in enumerate(batch.paths):
                record, line = _compare(h, lb[i], la[i], cfg.top)
                crop = visible_crop(transform, batch.images[i])
                png = cfg.out / f"{stems[path]}.{slug}.png"
                shown = shown_class(h, lb[i], la[i], cfg.show_class)
                save_image(png, edit_picture(h, crop, spliced, lb[i], la[i], delta_BN[i], shown))
                if shown is not None:
                    record["shown_class"] = h.classes[shown]
                records.append({"image": str(path), "head": h.name, "png": str(png)} | record)
                lines.append(f"{path.name} [{h.name}] {line}")
    report = cfg.out / "report.json"
    write_json(
        report,
        {
            "sae": cfg.sae,
            "edits": [str(e) for e in edits],
            "where": cfg.where,
            "patches": patches,
            "images": records,
            "skipped": skipped,
        },
    )
    return Result(report, lines, skipped)


def _validate(cfg: Config, edits: list[Edit]) -> None:
    if not cfg.evaluate and not edits:
        raise ConfigError("give at least one --edit (or --evaluate).")
    if cfg.evaluate and (edits or cfg.patches is not None):
        raise ConfigError(
            "--evaluate applies its own edit (--value where each class's latent fires); drop --edit and --patches."
        )
    if cfg.latents and not cfg.evaluate:
        raise ConfigError(
            "--latents chooses the latents of --evaluate; give --evaluate, or --edit without it."
        )
    if cfg.top < 1:
        raise ConfigError(f"--top must be positive, got {cfg.top}.")
    if not np.isfinite(cfg.value):
        raise ConfigError(f"--value {cfg.value} is not finite.")


def _check_show_class(cfg: Config, heads: list[Head]) -> None:
    if cfg.show_class is None:
        return
    drawn = [h for h in heads if h.kind == "patch" and h.multilabel]
    if not any(cfg.show_class in h.classes for h in drawn):
        known = sorted({c for h in drawn for c in h.classes})
        expected = f"expected one of {', '.join(known)}" if known else "no head is multi-label per-patch"
        raise ConfigError(f"--show-class {cfg.show_class!r}: {expected}.")


def _patch_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        patches = [int(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        raise ConfigError(
            f"--patches {text!r}: expected comma-separated patch indices, e.g. 10,11,26."
        ) from None
    if not patches:
        raise ConfigError(f"--patches {text!r}: names no patch; leave it out to edit every patch.")
    repeated = sorted({p for p in patches if patches.count(p) > 1})
    if repeated:
        raise ConfigError(f"--patches {text!r}: patch(es) {repeated} given more than once.")
    return patches


def _max_activations(cfg: Config, spliced: SplicedVit, transform, paths: list[pathlib.Path]) -> torch.Tensor:
    if cfg.visuals is not None:
        return inputs.max_from_visuals(cfg.visuals, spliced.sae.cfg.d_sae).to(spliced.device)
    batches = (b.x_B3HW for b in inputs.load_batches(paths, transform, cfg.batch_size, {}))
    return inputs.max_over(spliced, batches)


def _compare(head: Head, before: torch.Tensor, after: torch.Tensor, top: int) -> tuple[dict[str, Any], str]:
    """One image's predictions before and after, as a report record and a printed line."""
    pb, pa = head.predict(before), head.predict(after)
    if head.kind == "image":
        tb, ta = _top(head, before, top), _top(head, after, top)
        record = {"before": tb, "after": ta, "changed": bool(head.changed(before, after))}
        return record, f"{_fmt(tb)}  ->  {_fmt(ta)}"
    changed = torch.nonzero(head.changed(before, after)).flatten().tolist()
    rows = [{"patch": p, "before": _names(head, pb[p]), "after": _names(head, pa[p])} for p in changed]
    shown = "; ".join(
        f"{r['patch']}: {'+'.join(r['before']) or '-'} -> {'+'.join(r['after']) or '-'}" for r in rows[:6]
    )
    more = f" (and {len(rows) - 6} more)" if len(rows) > 6 else ""
    return {"changed_patches": rows}, f"{len(rows)} patch(es) changed" + (f": {shown}{more}" if rows else "")


def _fmt(top: list[tuple[str, float]]) -> str:
    return ", ".join(f"{c} {p:.2f}" for c, p in top)


def _names(head: Head, predicted_C: torch.Tensor) -> list[str]:
    return [head.classes[c] for c in torch.nonzero(predicted_C).flatten().tolist()]


def _top(head: Head, logits: torch.Tensor, top: int) -> list[tuple[str, float]]:
    probs = head.probs(logits)
    order = torch.argsort(probs, descending=True)[:top].tolist()
    return [(head.classes[c], float(probs[c])) for c in order]


def shown_class(head: Head, before: Tensor, after: Tensor, name: str | None = None) -> int | None:
    """The class whose presence a multi-label per-patch head's picture shows: `name` where the head
    has it, else the class whose probability summed over the patches changes most (the one the
    edit suppresses or adds); None for other heads."""
    if head.kind != "patch" or not head.multilabel:
        return None
    if name in head.classes:
        return head.classes.index(name)
    return int((head.probs(after) - head.probs(before)).sum(0).abs().argmax())


def edit_picture(
    head: Head,
    crop: Image.Image,
    spliced: SplicedVit,
    before: Tensor,
    after: Tensor,
    delta_N: Float[Tensor, " n"],
    shown: int | None = None,
) -> Image.Image:
    """One image's edit (`steering_panels`): `before` and `after` are the head's logits on it,
    `delta_N` the size of the edit on each token the SAE reads, `shown` the class whose presence
    is drawn (`shown_class`). The changed patches are `Head.changed`, as in the report."""
    size_P = np.zeros(spliced.vit.layout.n_patches, dtype=np.float32)
    at = (spliced.patch_N >= 0).cpu()
    size_P[spliced.patch_N.cpu()[at].numpy()] = delta_N.cpu()[at].numpy()
    grid = spliced.vit.layout.grid
    if head.kind == "image":
        return steering_panels(crop, grid, size_P, caption=_prediction_lines(head, before, after))
    presence = (
        None
        if shown is None
        else Presence(
            head.classes[shown], head.probs(before)[:, shown].numpy(), head.probs(after)[:, shown].numpy()
        )
    )
    return steering_panels(
        crop,
        grid,
        size_P,
        head.top_class(before).numpy(),
        head.top_class(after).numpy(),
        class_names=head.classes,
        changed_P=head.changed(before, after).numpy(),
        presence=presence,
    )


def _prediction_lines(head: Head, before: Tensor, after: Tensor) -> str:
    """An image head's predictions before and after, and what changed, for under its picture."""
    if not head.multilabel:
        return f"top class: {_fmt(_top(head, before, 1))}  ->  {_fmt(_top(head, after, 1))}"
    pb, pa = set(_names(head, head.predict(before))), set(_names(head, head.predict(after)))
    lost, gained = sorted(pb - pa), sorted(pa - pb)
    return "\n".join(
        [
            f"predicted before: {', '.join(sorted(pb)) or '-'}",
            f"predicted after: {', '.join(sorted(pa)) or '-'}",
            f"lost: {', '.join(lost) or '-'}; gained: {', '.join(gained) or '-'}",
        ]
    )


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in pathlib.Path(name).stem)[:40]


def _unique(names: list[str]) -> list[str]:
    """`names` with repeats numbered (x, x-2, x-3, ...)."""
    used: set[str] = set()
    out = []
    for name in names:
        unique, i = name, 1
        while unique in used:
            i += 1
            unique = f"{name}-{i}"
        used.add(unique)
        out.append(unique)
    return out


def _evaluate(cfg, spliced: SplicedVit, transform, heads: list[Head], paths, max_S, skipped) -> Result:
    classes = heads[0].classes
    if any(h.classes != classes for h in heads):
        raise ConfigError("--evaluate with several heads needs heads over the same classes.")
    targets = _targets(cfg, spliced, transform, heads, paths, classes)
    if not targets:
        raise ConfigError(
            f"--evaluate: none of the classes {', '.join(classes)} occurs in these images' labels; nothing to test."
        )
    batches = (b.x_B3HW for b in inputs.load_batches(paths, transform, cfg.batch_size, skipped))
    tests = effects.steering_test(spliced, heads, batches, targets, max_S, value=cfg.value, seed=cfg.seed)
    report = cfg.out / "report.json"
    write_json(
        report,
        {
            "sae": cfg.sae,
            "n_images": len(paths) - len(skipped),
            "tests": [t.to_dict() for t in tests],
            "skipped": skipped,
        },
    )
    lines = []
    for t in tests:
        m = {k: effects.number(v, ".3f") for k, v in t.medians().items()}
        lines += [f"head {t.head}: set each latent {t.edit}", t.table()]
        lines.append(
            f"median target change rate {m['target']}, other {m['other']}; random latent {m['random_latent_target']}; "
            f"random direction {m['random_direction_target']}"
        )
    return Result(report, lines, skipped)


def _targets(cfg, spliced: SplicedVit, transform, heads, paths, classes) -> list[tuple[int, int]]:
    """(class index, latent) pairs: given by --latents, or each class's best detector on the labels."""
    if cfg.latents:
        pairs = []
        for item in cfg.latents:
            name, sep, latent = item.rpartition("=")
            if not sep or name not in classes or not latent.isdigit():
                raise ConfigError(
                    f"--latents {item!r}: expected CLASS=LATENT with CLASS one of {', '.join(classes)}."
                )
            pairs.append((classes.index(name), int(latent)))
        check_latents([Edit(s, "set", 0.0) for _, s in pairs], spliced.sae.cfg.d_sae, cfg.sae)
        return pairs
    labels = inputs.labels_for(paths, classes, spliced.vit.layout.grid)
    if labels is None:
        raise ConfigError(
            "--evaluate needs each class's latent: give --latents CLASS=LATENT, or labelled images "
            "(class subfolders named like the head's classes, or a saev.synthetic folder)."
        )
    per_patch = (
        labels.patch_NPC is not None and any(h.kind == "patch" for h in heads) and spliced.tokens != "cls"
    )
    codes, rows = [], []
    for batch in inputs.load_batches(paths, transform, cfg.batch_size, {}):
        c = spliced.prefix(batch.x_B3HW).codes_BNS.cpu()
        idx = [paths.index(p) for p in batch.paths]
        if per_patch:
            codes.append(c[:, spliced.patch_N >= 0].reshape(-1, c.shape[-1]))
            rows.append(
                labels.patch_NPC[idx][:, spliced.patch_N[spliced.patch_N >= 0].cpu()].reshape(
                    -1, len(classes)
                )
            )
        else:
            codes.append(c.amax(1))
            rows.append(labels.image_NC[idx])
    labels_NC = torch.cat(rows)
    latents = effects.pick_latents(torch.cat(codes), labels_NC, cfg.seed)
    return [(c, s) for c, s in enumerate(latents) if labels_NC[:, c].any()]


def report(result: Result) -> None:
    for line in result.lines:
        print(line, file=sys.stderr)
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s)", file=sys.stderr)
    print(result.report)


COMMAND = Command(Config, run, report)

"""`saev steer`'s comparison: edit latents on each image, read each head before and after, and say
what changed, as report records and printed lines."""

import dataclasses
import math
import pathlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from saev.activations.families import Transform
from saev.activations.transforms import visible_crop
from saev.errors import ConfigError
from saev.fileio import save_image, write_json
from saev.steering import inputs
from saev.steering.edits import Edit, Where, check_latents, describe
from saev.steering.heads import Head
from saev.steering.splice import SplicedVit


@dataclasses.dataclass(frozen=True)
class Compared:
    """One image read by one head, before and after the edits."""

    head: Head
    crop: Image.Image
    """The crop the ViT saw."""
    before: Tensor
    """The head's logits on the image before the edits."""
    after: Tensor
    delta_N: Float[Tensor, " n"]
    """The size of the edit on each token the SAE reads."""
    shown: int | None
    """The class whose presence the picture shows (`shown_class`)."""
    png: pathlib.Path
    """Where the picture goes: one file per image and head, named apart."""
    record: dict[str, Any]
    """The report's record of it."""
    line: str
    """The printed line of it."""


@dataclasses.dataclass(frozen=True)
class Comparing:
    """What `compare_edits` edits, and what it reports."""

    edits: Sequence[Edit]
    where: Where = "all"
    """Edit every token the SAE reads, or only where the latent fires (active)."""
    patches: list[int] | None = None
    """Edit only these patches (row-major indices); None: all."""
    max_S: Tensor | None = None
    """Each latent's largest activation, the unit of relative edits."""
    top: int = 3
    """Classes listed per image for image heads."""
    show_class: str | None = None
    """The class the pictures of multi-label per-patch heads show (`shown_class`)."""


def compare_edits(
    spliced: SplicedVit,
    transform: Transform,
    heads: Sequence[Head],
    paths: Sequence[pathlib.Path],
    how: Comparing,
    out: pathlib.Path,
    skipped: dict[str, str],
    batch_size: int = 16,
) -> Iterator[Compared]:
    """Every readable image of `paths` with `how.edits` applied, read by each head; unreadable
    images are recorded in `skipped`."""
    # Two images (or heads) of the same name in other folders must not draw over each other.
    stems = dict(zip(paths, unique([p.stem for p in paths]), strict=True))
    slugs = unique([_slug(h.name) for h in heads])
    for batch in inputs.load_batches(paths, transform, batch_size, skipped):
        prefix = spliced.prefix(batch.x_B3HW)
        codes = spliced.edit(prefix, how.edits, where=how.where, patches=how.patches, max_S=how.max_S)
        before = spliced.finish(prefix.tokens_BTD)
        after = spliced.finish(spliced.tokens_with(prefix, codes), describe(how.edits))
        delta_BN = spliced.decode_delta(prefix.codes_BNS, codes).norm(dim=-1).cpu()
        for h, slug in zip(heads, slugs, strict=True):
            lb, la = h.logits(before).cpu(), h.logits(after).cpu()
            for i, path in enumerate(batch.paths):
                record, line = _compare(h, lb[i], la[i], how.top)
                png = out / f"{stems[path]}.{slug}.png"
                shown = shown_class(h, lb[i], la[i], how.show_class)
                if shown is not None:
                    record["shown_class"] = h.classes[shown]
                yield Compared(
                    h,
                    visible_crop(transform, batch.images[i]),
                    lb[i],
                    la[i],
                    delta_BN[i],
                    shown,
                    png,
                    {"image": str(path), "head": h.name, "png": str(png)} | record,
                    f"{path.name} [{h.name}] {line}",
                )


def write_comparison(
    compared: Iterable[Compared],
    draw: Callable[[Compared], Image.Image],
    report: pathlib.Path,
    run: dict[str, Any],
    skipped: dict[str, str],
) -> list[str]:
    """Each comparison's picture (drawn by `draw`: pictures are drawn a layer up, by
    `saev.explorer.pictures`) and the report: `run` (what was edited), then a record per image and
    head, then the skipped images. Returns the printed lines."""
    records, lines = [], []
    for c in compared:
        save_image(c.png, draw(c))
        records.append(c.record)
        lines.append(c.line)
    write_json(report, run | {"images": records, "skipped": skipped})
    return lines


def check_options(
    edits: Sequence[Edit], evaluate: bool, patches: str | None, latents: Sequence[str], top: int, value: float
) -> None:
    """`saev steer`'s options that go together: edits, or `--evaluate` with its own."""
    if not evaluate and not edits:
        raise ConfigError("give at least one --edit (or --evaluate).")
    if evaluate and (edits or patches is not None):
        raise ConfigError(
            "--evaluate applies its own edit (--value where each class's latent fires); drop --edit and --patches."
        )
    if latents and not evaluate:
        raise ConfigError(
            "--latents chooses the latents of --evaluate; give --evaluate, or --edit without it."
        )
    if top < 1:
        raise ConfigError(f"--top must be positive, got {top}.")
    if not math.isfinite(value):
        raise ConfigError(f"--value {value} is not finite.")


def parse_patches(text: str | None) -> list[int] | None:
    """`--patches`: comma-separated row-major patch indices, each once; None edits every patch."""
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


def check_edits(
    spliced: SplicedVit,
    heads: Sequence[Head],
    edits: Sequence[Edit],
    patches: list[int] | None,
    show_class: str | None,
    where: str,
) -> None:
    """Refuse, before any work, a `--show-class` no head's pictures show (multi-label, per patch),
    and edits of latents or patches the SAE (named `where` in messages) does not have."""
    if show_class is not None:
        drawn = [h for h in heads if h.kind == "patch" and h.multilabel]
        if not any(show_class in h.classes for h in drawn):
            known = sorted({c for h in drawn for c in h.classes})
            expected = f"expected one of {', '.join(known)}" if known else "no head is multi-label per-patch"
            raise ConfigError(f"--show-class {show_class!r}: {expected}.")
    check_latents(edits, spliced.sae.cfg.d_sae, where)
    if patches is not None and spliced.tokens == "cls":
        raise ConfigError("--patches: the SAE reads only the [CLS] token here, so no patch can be edited.")
    spliced.eligible(patches)  # range check


def max_activations(
    spliced: SplicedVit,
    transform: Transform,
    paths: Sequence[pathlib.Path],
    batch_size: int,
    visuals: pathlib.Path | None = None,
) -> Float[Tensor, " d_sae"]:
    """Each latent's largest activation: from a `saev visuals` folder, else over the images."""
    if visuals is not None:
        return inputs.max_from_visuals(visuals, spliced.sae.cfg.d_sae).to(spliced.device)
    batches = (b.x_B3HW for b in inputs.load_batches(paths, transform, batch_size, {}))
    return inputs.max_over(spliced, batches)


def _compare(head: Head, before: Tensor, after: Tensor, top: int) -> tuple[dict[str, Any], str]:
    """One image's predictions before and after, as a report record and a printed line."""
    pb, pa = head.predict(before), head.predict(after)
    if head.kind == "image":
        tb, ta = top_classes(head, before, top), top_classes(head, after, top)
        record = {"before": tb, "after": ta, "changed": bool(head.changed(before, after))}
        return record, f"{fmt(tb)}  ->  {fmt(ta)}"
    changed = torch.nonzero(head.changed(before, after)).flatten().tolist()
    rows = [
        {"patch": p, "before": predicted_names(head, pb[p]), "after": predicted_names(head, pa[p])}
        for p in changed
    ]
    shown = "; ".join(
        f"{r['patch']}: {'+'.join(r['before']) or '-'} -> {'+'.join(r['after']) or '-'}" for r in rows[:6]
    )
    more = f" (and {len(rows) - 6} more)" if len(rows) > 6 else ""
    return {"changed_patches": rows}, f"{len(rows)} patch(es) changed" + (f": {shown}{more}" if rows else "")


def fmt(top: list[tuple[str, float]]) -> str:
    return ", ".join(f"{c} {p:.2f}" for c, p in top)


def predicted_names(head: Head, predicted_C: Tensor) -> list[str]:
    return [head.classes[c] for c in torch.nonzero(predicted_C).flatten().tolist()]


def top_classes(head: Head, logits: Tensor, top: int) -> list[tuple[str, float]]:
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


def prediction_lines(head: Head, before: Tensor, after: Tensor) -> str:
    """An image head's predictions before and after, and what changed, for under its picture."""
    if not head.multilabel:
        return f"top class: {fmt(top_classes(head, before, 1))}  ->  {fmt(top_classes(head, after, 1))}"
    pb, pa = set(predicted_names(head, head.predict(before))), set(predicted_names(head, head.predict(after)))
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


def unique(labels: list[str]) -> list[str]:
    """`labels` with repeats numbered (x, x-2, x-3, ...)."""
    used: set[str] = set()
    out = []
    for label in labels:
        candidate, i = label, 1
        while candidate in used:
            i += 1
            candidate = f"{label}-{i}"
        used.add(candidate)
        out.append(candidate)
    return out

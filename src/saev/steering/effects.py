"""The quantitative steering test: does suppressing a class's latent remove exactly that class?

For each class (or concept) c and its chosen latent, the edit (by default: set the latent to -1x
its largest activation where it fires) runs through the model and the head's predictions are
compared with the clean ones:

- target change rate: of the units (patches or images) predicted c before, the share no longer
  predicted c after;
- other change rate: of the other units (not predicted c before; for multi-label heads only those
  predicted some class, i.e. object patches), the share whose predicted classes change at all.

Two baselines take the same edit: a random live latent instead of the chosen one, and a random
direction with the same norm as the edit's change, added on the same tokens.

A rate with nothing to count (no unit predicted c before, or no other unit) is undefined: None,
null in JSON and "-" in tables, with a warning, never NaN.
"""

import dataclasses
import logging
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import tqdm
from jaxtyping import Bool, Float
from torch import Tensor

from saev.activations.families import Transform
from saev.concepts import best_detectors
from saev.errors import ConfigError
from saev.steering import inputs
from saev.steering.edits import Edit, check_latents
from saev.steering.heads import Head
from saev.steering.splice import Prefix, SplicedVit

logger = logging.getLogger("saev.steering")


def number(value: float | None, spec: str) -> str:
    """`value` formatted by `spec`, or "-" where it is undefined (None)."""
    return "-" if value is None else format(value, spec)


@dataclasses.dataclass
class Counts:
    n_target: int = 0
    target_changed: int = 0
    n_other: int = 0
    other_changed: int = 0
    per_image: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)
    """[images, 4] blocks: the four counts of each image, in order (bootstrap intervals over images)."""

    def add(
        self,
        before_NC: Bool[Tensor, "n c"],
        after_NC: Bool[Tensor, "n c"],
        c: int,
        multilabel: bool,
        n_images: int = 1,
    ) -> None:
        """Count units (rows) of `n_images` images, each with the same number of units."""
        target_N = before_NC[:, c]
        other_N = ~target_N & (before_NC.any(1) if multilabel else True)
        tallies_N4 = torch.stack(
            [target_N, target_N & ~after_NC[:, c], other_N, other_N & (before_NC != after_NC).any(1)], 1
        )
        per_image = tallies_N4.reshape(n_images, -1, 4).sum(1).cpu().numpy()
        self.per_image.append(per_image)
        self.n_target, self.target_changed, self.n_other, self.other_changed = (
            a + int(b)
            for a, b in zip(
                (self.n_target, self.target_changed, self.n_other, self.other_changed),
                per_image.sum(0),
                strict=True,
            )
        )

    def images(self) -> np.ndarray:
        """[images, 4]: n_target, target_changed, n_other, other_changed of each image."""
        return np.concatenate(self.per_image) if self.per_image else np.zeros((0, 4), dtype=np.int64)

    @property
    def target(self) -> float | None:
        return self.target_changed / self.n_target if self.n_target else None

    @property
    def other(self) -> float | None:
        return self.other_changed / self.n_other if self.n_other else None

    def to_dict(self) -> dict[str, float | int | None]:
        counts = {k: getattr(self, k) for k in ("n_target", "target_changed", "n_other", "other_changed")}
        return counts | {"target_rate": self.target, "other_rate": self.other}


@dataclasses.dataclass(frozen=True)
class ClassResult:
    cls: str
    latent: int
    random_latent: int
    edit: Counts
    random_latent_edit: Counts
    random_direction: Counts

    def to_dict(self) -> dict:
        return {
            "class": self.cls,
            "latent": self.latent,
            "random_latent": self.random_latent,
            "edit": self.edit.to_dict(),
            "random_latent_edit": self.random_latent_edit.to_dict(),
            "random_direction": self.random_direction.to_dict(),
        }


@dataclasses.dataclass(frozen=True)
class SteeringTest:
    head: str
    edit: str
    """The edit applied to each chosen latent, e.g. `=-1x where active`."""
    results: list[ClassResult]

    def medians(self) -> dict[str, float | None]:
        def med(values: Iterable[float | None]) -> float | None:
            defined = [v for v in values if v is not None]
            return float(np.median(defined)) if defined else None

        return {
            "target": med(r.edit.target for r in self.results),
            "other": med(r.edit.other for r in self.results),
            "random_latent_target": med(r.random_latent_edit.target for r in self.results),
            "random_latent_other": med(r.random_latent_edit.other for r in self.results),
            "random_direction_target": med(r.random_direction.target for r in self.results),
            "random_direction_other": med(r.random_direction.other for r in self.results),
        }

    def to_dict(self) -> dict:
        return {
            "head": self.head,
            "edit": self.edit,
            "medians": self.medians(),
            "classes": [r.to_dict() for r in self.results],
        }

    def table(self) -> str:
        rows = [
            "| class | latent | target | other | random latent | target | other | random direction target | other |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.results:
            rates = [
                number(v, ".3f")
                for c in (r.edit, r.random_latent_edit, r.random_direction)
                for v in (c.target, c.other)
            ]
            rows.append(
                f"| {r.cls} | {r.latent} | {' | '.join(rates[:2])} | {r.random_latent} | {' | '.join(rates[2:])} |"
            )
        m = {k: number(v, ".3f") for k, v in self.medians().items()}
        rows.append(
            f"| median | | {m['target']} | {m['other']} | | {m['random_latent_target']} | "
            f"{m['random_latent_other']} | {m['random_direction_target']} | {m['random_direction_other']} |"
        )
        return "\n".join(rows)

    def lines(self) -> list[str]:
        """What `saev steer --evaluate` prints of it: the edit, the table and the medians."""
        m = {k: number(v, ".3f") for k, v in self.medians().items()}
        return [
            f"head {self.head}: set each latent {self.edit}",
            self.table(),
            f"median target change rate {m['target']}, other {m['other']}; random latent {m['random_latent_target']}; "
            f"random direction {m['random_direction_target']}",
        ]

    def undefined(self) -> list[str]:
        """Classes whose chosen edit has an undefined target rate: never predicted before it."""
        return [r.cls for r in self.results if r.edit.target is None]


def steering_test(
    spliced: SplicedVit,
    heads: Sequence[Head],
    batches: Iterable[Tensor],
    targets: Sequence[tuple[int, int]],
    max_S: Float[Tensor, " d_sae"],
    *,
    value: float = -1.0,
    seed: int = 0,
    random_direction: bool = True,
) -> list[SteeringTest]:
    """Run the test for (class index, latent) pairs over image batches ([B, 3, H, W]); one result per head.

    The edit sets each latent to `value` times its largest activation where it fires. Without
    `random_direction` that baseline is not run (a third of the forward passes) and its counts stay 0.
    """
    rng = np.random.default_rng(seed)
    live = torch.nonzero(max_S > 0).flatten().tolist()
    randoms = []
    for _, latent in targets:
        others = [s for s in live if s != latent]
        if not others:
            raise ConfigError(
                f"no live latent other than {latent} for the random-latent baseline: every other latent's "
                "largest activation is 0."
            )
        randoms.append(int(rng.choice(others)))
    g = torch.Generator().manual_seed(seed)
    directions_KD = F.normalize(torch.randn(len(targets), spliced.vit.d_vit, generator=g), dim=-1).to(
        spliced.device
    )
    counts = {(h.name, k, kind): Counts() for h in heads for k in range(len(targets)) for kind in range(3)}
    # Shown only past 2 s: a few images pass unnoticed, the quickstart's held-out images do not.
    for x in tqdm.tqdm(batches, desc="steering", unit="batch", delay=2, dynamic_ncols=True):
        prefix = spliced.prefix(x)
        before = {h.name: _predict(h, spliced.finish(prefix.tokens_BTD)) for h in heads}
        for k, (c, latent) in enumerate(targets):
            real, delta_BND = _edited(spliced, prefix, latent, value, max_S)
            random, _ = _edited(spliced, prefix, randoms[k], value, max_S)
            finals = [real, random]
            if random_direction:
                norm_BN1 = delta_BND.norm(dim=-1, keepdim=True)
                finals.append(
                    spliced.finish(
                        spliced.add_to_read(prefix, norm_BN1 * directions_KD[k]),
                        f"a random direction of the norm of the edit of latent {latent} (--value {value:g})",
                    )
                )
            for h in heads:
                for kind, final in enumerate(finals):
                    counts[h.name, k, kind].add(before[h.name], _predict(h, final), c, h.multilabel, len(x))
    tests = [
        SteeringTest(
            h.name,
            f"={value:g}x where active",
            [
                ClassResult(h.classes[c], latent, randoms[k], *(counts[h.name, k, kind] for kind in range(3)))
                for k, (c, latent) in enumerate(targets)
            ],
        )
        for h in heads
    ]
    for t in tests:
        if t.undefined():
            logger.warning(
                "head %s: %s never predicted on these images before the edit; target change rates "
                "undefined (null in the report)",
                t.head,
                ", ".join(t.undefined()),
            )
    return tests


def _edited(
    spliced: SplicedVit, prefix: Prefix, latent: int, value: float, max_S: Tensor
) -> tuple[Tensor, Float[Tensor, "batch n d_vit"]]:
    edit = Edit(latent, "set", value, relative=True)
    codes = spliced.edit(prefix, [edit], where="active", max_S=max_S)
    delta_BND = spliced.decode_delta(prefix.codes_BNS, codes)
    return spliced.finish(spliced.add_to_read(prefix, delta_BND), f"edit {edit} where active"), delta_BND


def _predict(head: Head, final_BTD: Tensor) -> Bool[Tensor, "n c"]:
    pred = head.predict(head.logits(final_BTD))
    return pred.reshape(-1, pred.shape[-1])


def pick_latents(
    codes_NS: Float[Tensor, "n d_sae"], labels_NC: Bool[Tensor, "n classes"], seed: int = 0
) -> list[int]:
    """Each class's best detecting latent: chosen (latent and threshold, by F1) on a random half of
    the units, so a class with too few examples still gets the latent that fires with it most."""
    g = torch.Generator().manual_seed(seed)
    select_N = torch.rand(len(codes_NS), generator=g) < 0.5
    return [d.unit for d in best_detectors(codes_NS, labels_NC, select_N, signed=False, include_zero=True)]


def evaluate_classes(
    spliced: SplicedVit,
    transform: Transform,
    heads: Sequence[Head],
    paths: Sequence[pathlib.Path],
    max_S: Float[Tensor, " d_sae"],
    skipped: dict[str, str],
    batch_size: int = 16,
    *,
    latents: Sequence[str] = (),
    value: float = -1.0,
    seed: int = 0,
    where: str = "the SAE",
) -> list[SteeringTest]:
    """`saev steer --evaluate`: the steering test of each class of the heads (all over the same
    classes) that occurs in the images' labels, with its latent from `latents` (CLASS=LATENT) or
    its best detector on the labels. Unreadable images are recorded in `skipped`."""
    classes = heads[0].classes
    if any(h.classes != classes for h in heads):
        raise ConfigError("--evaluate with several heads needs heads over the same classes.")
    if latents:
        targets = parse_latents(latents, classes)
        check_latents([Edit(s, "set", 0.0) for _, s in targets], spliced.sae.cfg.d_sae, where)
    else:
        targets = _detector_targets(spliced, transform, heads, paths, classes, seed, batch_size)
    if not targets:
        raise ConfigError(
            f"--evaluate: none of the classes {', '.join(classes)} occurs in these images' labels; nothing to test."
        )
    batches = (b.x_B3HW for b in inputs.load_batches(paths, transform, batch_size, skipped))
    return steering_test(spliced, heads, batches, targets, max_S, value=value, seed=seed)


def parse_latents(items: Sequence[str], classes: tuple[str, ...]) -> list[tuple[int, int]]:
    """`--latents` CLASS=LATENT pairs as (class index, latent)."""
    pairs = []
    for item in items:
        name, sep, latent = item.rpartition("=")
        if not sep or name not in classes or not latent.isdigit():
            raise ConfigError(
                f"--latents {item!r}: expected CLASS=LATENT with CLASS one of {', '.join(classes)}."
            )
        pairs.append((classes.index(name), int(latent)))
    return pairs


def _detector_targets(
    spliced: SplicedVit,
    transform: Transform,
    heads: Sequence[Head],
    paths: Sequence[pathlib.Path],
    classes: tuple[str, ...],
    seed: int,
    batch_size: int,
) -> list[tuple[int, int]]:
    """(class index, latent) pairs: each class's best detecting latent on the images' labels, for
    the classes that occur in them."""
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
    for batch in inputs.load_batches(paths, transform, batch_size, {}):
        c = spliced.prefix(batch.x_B3HW).codes_BNS.cpu()
        idx = [paths.index(p) for p in batch.paths]
        if per_patch:
            assert labels.patch_NPC is not None  # per_patch requires patch labels
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
    latents = pick_latents(torch.cat(codes), labels_NC, seed)
    return [(c, s) for c, s in enumerate(latents) if labels_NC[:, c].any()]

"""Spliced evaluation: how much of the model's behaviour the SAE's reconstruction keeps.

The tokens the SAE reads at block L are replaced by (1) nothing (clean), (2) the SAE's
reconstruction (spliced), (3) zeros, (4) the mean activation (the SAE's normalisation mean, the
mean of its training data, or the mean over these images for SAEs without one), and the rest of
the model and the head run on. For each: the head's loss against the labels (or against the
clean predictions when there are none), its accuracy (F1 for multi-label heads) and the KL
divergence from the clean output, averaged over units (images or patches). Then
`recovered = (L_ablated - L_spliced) / (L_ablated - L_clean)`, a ratio of dataset means, and the
SAE's FVE and L0 on these tokens.

`recovered` is undefined when ablating changes nothing (L_ablated = L_clean), the FVE when the
tokens do not vary: None (null in JSON), with a warning, never NaN.
"""

import dataclasses
import logging
import math
import pathlib
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
import tqdm
from jaxtyping import Float
from torch import Tensor

from saev.activations.families import Transform
from saev.errors import ConfigError, ImageError
from saev.nn.evaluation import Accumulator
from saev.steering import inputs
from saev.steering.heads import Head
from saev.steering.splice import Prefix, SplicedVit

CONDITIONS = ("clean", "spliced", "zero", "mean")
logger = logging.getLogger("saev.steering")


@dataclasses.dataclass
class _Sums:
    n: int = 0
    loss: float = 0.0
    kl: float = 0.0
    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0
    correct: float = 0.0


@dataclasses.dataclass(frozen=True)
class Scores:
    loss: float
    accuracy: float
    """Share of units whose class is right; for multi-label heads, the micro F1."""
    kl: float
    """Mean KL divergence from the clean output."""


@dataclasses.dataclass(frozen=True)
class SpliceEvaluation:
    head: str
    n_units: int
    labels: str
    """"given" or "clean predictions" (what the loss and accuracy compare against)."""
    scores: dict[str, Scores]
    recovered_zero: float | None
    recovered_mean: float | None
    fve: float | None
    l0: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def table(self) -> str:
        rows = ["| condition | loss | accuracy/F1 | KL to clean |", "|---|---|---|---|"]
        rows += [f"| {c} | {s.loss:.4f} | {s.accuracy:.4f} | {s.kl:.4f} |" for c, s in self.scores.items()]
        return "\n".join(rows)


def evaluate_splice(
    spliced: SplicedVit,
    head: Head,
    batches: Iterable[tuple[Tensor, Tensor | None]],
    mean_D: Float[Tensor, " d_vit"] | None = None,
    total: int | None = None,
) -> SpliceEvaluation:
    """`batches` yield images [B, 3, H, W] and their labels (multi-hot [B, C] or [B, P, C] for multi-label heads,
    class indices [B] or [B, P] otherwise), or None to score against the clean predictions; `total`
    images in all, for the progress bar."""
    sae = spliced.sae
    mean_D = sae.act_mean if mean_D is None else mean_D
    if mean_D is None:
        raise ValueError("the SAE has no normalisation mean: pass mean_D (the mean activation at its layer).")
    sums = {c: _Sums() for c in CONDITIONS}
    acc = Accumulator(sae)
    given = None
    bar = _progress(f"evaluate {head.name}", total)
    for x, labels in batches:
        prefix = spliced.prefix(x)
        with torch.inference_mode():
            acc.add(sae.normalize(prefix.tokens_BTD[:, spliced.index_N]).reshape(-1, sae.cfg.d_vit))
        logits = condition_logits(spliced, head, prefix, mean_D)
        given = labels is not None if given is None else given
        target = (
            labels.to(logits["clean"].device) if labels is not None else clean_target(head, logits["clean"])
        )
        for c in CONDITIONS:
            _accumulate(sums[c], head, logits[c], logits["clean"], target)
        bar.update(len(x))
    bar.close()
    if not sums["clean"].n:
        raise ImageError(f"head {head.name}: no images to evaluate.")
    scores = {c: _scores(s, head.multilabel) for c, s in sums.items()}
    ev = acc.result()

    def recovered(ablated: str) -> float | None:
        gap = scores[ablated].loss - scores["clean"].loss
        if gap:
            return (scores[ablated].loss - scores["spliced"].loss) / gap
        logger.warning(
            "head %s: %s ablation leaves the loss as it is, so the loss recovered against it is undefined "
            "(null in the report)",
            head.name,
            ablated,
        )
        return None

    fve = ev.fve if math.isfinite(ev.fve) else None
    if fve is None:
        logger.warning(
            "the SAE's tokens do not vary on these images: its FVE is undefined (null in the report)"
        )
    return SpliceEvaluation(
        head.name,
        sums["clean"].n,
        "given" if given else "clean predictions",
        scores,
        recovered("zero"),
        recovered("mean"),
        fve,
        ev.l0,
    )


@torch.inference_mode()
def condition_logits(
    spliced: SplicedVit, head: Head, prefix: Prefix, mean_D: Float[Tensor, " d_vit"]
) -> dict[str, Tensor]:
    """The head's logits under each of CONDITIONS: clean, the SAE's reconstruction spliced in, and
    the read tokens zero- or mean-ablated."""
    read_BND = prefix.tokens_BTD[:, spliced.index_N]
    tokens = {
        "clean": prefix.tokens_BTD,
        "spliced": spliced.tokens_with(prefix, mode="replace"),
        "zero": spliced.replace_read(prefix, torch.zeros_like(read_BND)),
        "mean": spliced.replace_read(prefix, mean_D.expand_as(read_BND)),
    }
    return {c: head.logits(spliced.finish(t)) for c, t in tokens.items()}


def clean_target(head: Head, logits: Tensor) -> Tensor:
    return (logits > 0).float() if head.multilabel else logits.argmax(-1)


def unit_losses(head: Head, logits: Tensor, clean: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Each unit's (image's or patch's) loss against `target` and KL divergence from the clean
    output, flattened over batch and patches: [units] each."""
    n_classes = logits.shape[-1]
    logits, clean = logits.reshape(-1, n_classes).float(), clean.reshape(-1, n_classes).float()
    if head.multilabel:
        target = target.reshape(-1, n_classes).float()
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
        p = clean.sigmoid()
        kl = p * (F.logsigmoid(clean) - F.logsigmoid(logits)) + (1 - p) * (
            F.logsigmoid(-clean) - F.logsigmoid(-logits)
        )
        return loss, kl.mean(1)
    loss = F.cross_entropy(logits, target.reshape(-1).long(), reduction="none")
    return loss, (clean.softmax(-1) * (clean.log_softmax(-1) - logits.log_softmax(-1))).sum(-1)


def _accumulate(s: _Sums, head: Head, logits: Tensor, clean: Tensor, target: Tensor) -> None:
    n_classes = logits.shape[-1]
    loss, kl = unit_losses(head, logits, clean, target)
    s.n += len(loss)
    s.loss += float(loss.sum())
    s.kl += float(kl.sum())
    logits = logits.reshape(-1, n_classes)
    if head.multilabel:
        target = target.reshape(-1, n_classes).float()
        pred = logits.float().sigmoid() > 0.5
        s.tp += float((pred & (target > 0)).sum())
        s.fp += float((pred & (target == 0)).sum())
        s.fn += float((~pred & (target > 0)).sum())
    else:
        s.correct += float((logits.argmax(-1) == target.reshape(-1).long()).sum())


def _scores(s: _Sums, multilabel: bool) -> Scores:
    n = max(s.n, 1)
    accuracy = 2 * s.tp / max(2 * s.tp + s.fp + s.fn, 1) if multilabel else s.correct / n
    return Scores(s.loss / n, accuracy, s.kl / n)


def _progress(desc: str, total: int | None) -> tqdm.tqdm:
    """A bar over images, shown only past 2 s: a few images pass unnoticed, thousands do not."""
    return tqdm.tqdm(total=total, desc=desc, unit="img", delay=2, dynamic_ncols=True)


def mean_activation(
    spliced: SplicedVit, batches: Iterable[Tensor], total: int | None = None
) -> Float[Tensor, " d_vit"]:
    """The mean of the tokens the SAE reads over image batches ([B, 3, H, W]; `total` images)."""
    total_D, n = torch.zeros(spliced.vit.d_vit, dtype=torch.float64, device=spliced.device), 0
    bar = _progress("mean activation", total)
    for x in batches:
        read = spliced.prefix(x).tokens_BTD[:, spliced.index_N]
        total_D += read.double().sum((0, 1))
        n += read.shape[0] * read.shape[1]
        bar.update(len(x))
    bar.close()
    return (total_D / max(n, 1)).float()


def labelled_batches(
    paths: Sequence[pathlib.Path],
    transform: Transform,
    batch_size: int,
    labels: inputs.Labels | None,
    head: Head,
    skipped: dict[str, str],
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Image batches with their labels in the head's terms (`evaluate_splice`), or None where the
    images have none; unreadable images are recorded in `skipped`."""
    for batch in inputs.load_batches(paths, transform, batch_size, skipped):
        idx = [paths.index(p) for p in batch.paths]
        if labels is None or (head.kind == "patch" and labels.patch_NPC is None):
            yield batch.x_B3HW, None
            continue
        table = labels.patch_NPC if head.kind == "patch" else labels.image_NC
        assert table is not None  # patch labels were checked above
        rows = table[idx]
        if not head.multilabel and not (rows.sum(-1) == 1).all():
            # argmax would score such a unit against the head's first class.
            odd = next(p for p, r in zip(batch.paths, rows, strict=True) if not (r.sum(-1) == 1).all())
            raise ConfigError(
                f"{odd}: its labels give some {'patches' if head.kind == 'patch' else 'images'} no class (or "
                f"several) of head {head.name}, which predicts exactly one of {', '.join(head.classes)}; give "
                "images of those classes only, or none with labels to compare with the clean predictions."
            )
        yield batch.x_B3HW, rows.float() if head.multilabel else rows.float().argmax(-1)

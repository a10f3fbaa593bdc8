"""Scorecard metrics that run the model on pixels: spliced preservation on a head, steering
selectivity, and the evaluator's image embeddings for monosemanticity."""

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import tqdm
from jaxtyping import Float
from torch import Tensor

from saev.activations.vit import Vit
from saev.bench.stats import Metric, bootstrap
from saev.steering.effects import steering_test
from saev.steering.heads import Head
from saev.steering.reconstruction import CONDITIONS, clean_target, condition_logits, unit_losses
from saev.steering.splice import SplicedVit


@torch.inference_mode()
def preservation(
    spliced: SplicedVit,
    head: Head,
    batches: Iterable[Float[Tensor, "batch 3 height width"]],
    mean_D: Float[Tensor, " d_vit"],
    *,
    resamples: int,
    seed: int = 0,
) -> list[Metric]:
    """How much of the head's loss the spliced reconstruction keeps, against zero and mean ablation
    (`saev evaluate`'s `recovered`), and its KL divergence from the clean output. Targets are the
    clean predictions, so any head works without labels."""
    loss_NC, kl_N = [], []
    for x in batches:
        logits = condition_logits(spliced, head, spliced.prefix(x), mean_D)
        target = clean_target(head, logits["clean"])
        per_image = []
        for c in CONDITIONS:
            loss_U, kl_U = unit_losses(head, logits[c], logits["clean"], target)
            per_image.append(loss_U.reshape(len(x), -1).mean(1))
            if c == "spliced":
                kl_N.append(kl_U.reshape(len(x), -1).mean(1).cpu())
        loss_NC.append(torch.stack(per_image, 1).cpu())
    losses = torch.cat(loss_NC).double().numpy()
    kl = torch.cat(kl_N).double().numpy()
    n = len(losses)

    def recovered(ablated: int):
        def statistic(w_N: np.ndarray) -> float:
            clean, spl, abl = (w_N @ losses[:, i] for i in (0, 1, ablated))
            return (abl - spl) / (abl - clean) if abl != clean else math.nan

        return statistic

    details = {"head": head.name, "targets": "the clean predictions"}
    return [
        Metric(
            f"recovered_{name}",
            "reconstruction",
            bootstrap(recovered(i), n, resamples=resamples, seed=seed),
            True,
            details=details,
        )
        for name, i in (("zero", 2), ("mean", 3))
    ] + [
        Metric(
            "kl_spliced",
            "reconstruction",
            bootstrap(lambda w: float(w @ kl / w.sum()), n, resamples=resamples, seed=seed),
            False,
            details=details,
        )
    ]


def steering(
    spliced: SplicedVit,
    head: Head,
    batches: Iterable[Tensor],
    targets: Sequence[tuple[int, int]],
    max_S: Float[Tensor, " d_sae"],
    *,
    resamples: int,
    seed: int = 0,
) -> list[Metric]:
    """Per concept: suppress its best latent (`saev steer --evaluate`'s edit, -1x where active) and
    count how often the concept's predictions go (target) and how often other units change
    (other), beside a random live latent given the same edit. Selectivity = target - other."""
    [test] = steering_test(spliced, [head], batches, targets, max_S, seed=seed, random_direction=False)
    edit_NK4 = np.stack([r.edit.images() for r in test.results], 1).astype(np.float64)
    random_NK4 = np.stack([r.random_latent_edit.images() for r in test.results], 1).astype(np.float64)
    n = len(edit_NK4)

    def rates(counts_NK4: np.ndarray, kind: str):
        def statistic(w_N: np.ndarray) -> float:
            sums_K4 = np.tensordot(w_N, counts_NK4, axes=1)
            target = sums_K4[:, 1] / np.where(sums_K4[:, 0] > 0, sums_K4[:, 0], np.nan)
            other = sums_K4[:, 3] / np.where(sums_K4[:, 2] > 0, sums_K4[:, 2], np.nan)
            value = {"target": target, "other": other, "selectivity": target - other}[kind]
            return float(np.nanmean(value)) if np.isfinite(value).any() else math.nan

        return statistic

    per_concept = [{k: v for k, v in r.to_dict().items() if k != "random_direction"} for r in test.results]

    def metric(kind: str, better: bool) -> Metric:
        est = bootstrap(rates(edit_NK4, kind), n, resamples=resamples, seed=seed)
        base = bootstrap(rates(random_NK4, kind), n, resamples=resamples, seed=seed)
        details: dict[str, Any] = {"head": head.name, "edit": test.edit}
        # The per-concept counts once, with the headline metric, not thrice.
        details |= {"per_concept": per_concept} if kind == "selectivity" else {}
        return Metric(f"steering_{kind}", "steering", est, better, base, "a random live latent", details)

    return [metric("selectivity", True), metric("target", True), metric("other", False)]


@torch.inference_mode()
def embeddings(vit: Vit, batches: Iterable[Tensor], total: int) -> np.ndarray:
    """Each image's evaluator embedding: the last block's patch tokens after the final norm, averaged."""
    index = vit.layout.index(cls_token=False)
    out = []
    for x in tqdm.tqdm(batches, total=total, desc="evaluator", unit="batch"):
        final = vit.features(vit.run_to(x, -1))
        out.append(final[:, index.to(final.device)].mean(1).float().cpu())
    return torch.cat(out).numpy()

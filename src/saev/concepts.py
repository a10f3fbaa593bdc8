"""How well single units (SAE latents or ViT neurons) detect known concepts, patch by patch.

For every concept, each unit becomes a detector `value > threshold` with the threshold chosen
among quantiles of its values. The best (unit, threshold) is picked on one set of patches and
scored (F1, precision, recall) on another, so the reported numbers are not tuned on themselves.
"""

import dataclasses
import pathlib
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from saev import synthetic
from saev.data.store import ShardStore
from saev.nn.modeling import SparseAutoencoder

QUANTILES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)


@dataclasses.dataclass(frozen=True)
class Detection:
    unit: int
    """Index of the latent or neuron; for signed units, which sign is in `sign`."""
    sign: int
    threshold: float
    f1: float
    precision: float
    recall: float


@dataclasses.dataclass(frozen=True)
class ConceptScore:
    concept: str
    patches: int
    """Scored patches that show the concept."""
    latent: Detection
    """The best SAE latent."""
    neuron: Detection
    """The best single ViT residual dimension (either sign)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def score_store(
    sae: SparseAutoencoder,
    store: ShardStore,
    layer: int,
    dataset: synthetic.Dataset,
    holdout: float = 0.1,
    device: str = "cpu",
) -> list[ConceptScore]:
    """Best latent and best neuron per concept on a store of `dataset`'s images.

    The last `holdout` of the images (held out from SAE training) are split by image: even ones
    choose each detector's unit and threshold, odd ones score it.
    """
    records = {pathlib.PurePath(r.file).name: r for r in dataset.records}
    n = len(store)
    held_out = range(n - max(2, int(np.ceil(holdout * n))), n)
    layer_i, cls = store.layer_index(layer), int(store.meta.cls_token)
    acts, labels = [], []
    for i in held_out:
        acts.append(torch.from_numpy(store.acts(i)[layer_i, cls:]))
        record = records[pathlib.PurePath(store.images[i]["path"]).name]
        labels.append(
            torch.from_numpy(
                synthetic.patch_concepts(record, store.grid).reshape(len(synthetic.CONCEPTS), -1).T
            )
        )
    acts_NV, labels_NC = torch.cat(acts), torch.cat(labels)
    with torch.inference_mode():
        codes_NS = sae.encode(acts_NV.to(device)).cpu()
    select_N = (torch.arange(len(acts_NV)) // store.meta.n_patches_per_img) % 2 == 0
    latents = best_detectors(codes_NS, labels_NC, select_N, signed=False, include_zero=True)
    neurons = best_detectors(acts_NV, labels_NC, select_N, signed=True, include_zero=False)
    return [
        ConceptScore(concept, int(labels_NC[~select_N, c].sum()), lat, neu)
        for c, (concept, lat, neu) in enumerate(zip(synthetic.CONCEPTS, latents, neurons, strict=True))
    ]


def best_detectors(
    values_NU: Float[Tensor, "n units"],
    labels_NC: Bool[Tensor, "n concepts"],
    select_N: Bool[Tensor, " n"],
    *,
    signed: bool,
    include_zero: bool,
) -> list[Detection]:
    """Per concept, the best unit and threshold on `select_N` patches, scored on the others.

    `signed` also tries each unit negated (dense neurons can encode a concept by going down);
    `include_zero` adds the threshold 0 ("the latent fires"), natural for sparse codes.
    """
    values_NU = values_NU.float()
    if signed:
        values_NU = torch.cat([values_NU, -values_NU], dim=1)
    n_units = values_NU.shape[1] // (2 if signed else 1)
    labels_NC = labels_NC.float()
    sel, test = values_NU[select_N], values_NU[~select_N]
    thresholds_QU = torch.quantile(sel, torch.tensor(QUANTILES), dim=0)
    if include_zero:
        thresholds_QU = torch.cat([torch.zeros(1, sel.shape[1]), thresholds_QU])
    best_f1 = torch.full((labels_NC.shape[1], sel.shape[1]), -1.0)
    best_thr = torch.zeros_like(best_f1)
    for thr_U in thresholds_QU:
        f1_CU = _scores(sel > thr_U, labels_NC[select_N])[0]
        better = f1_CU > best_f1
        best_f1 = torch.where(better, f1_CU, best_f1)
        best_thr = torch.where(better, thr_U.expand_as(best_thr), best_thr)
    out = []
    for c in range(labels_NC.shape[1]):
        u = int(best_f1[c].argmax())
        f1, p, r = (
            float(t[0, 0])
            for t in _scores(test[:, u : u + 1] > best_thr[c, u], labels_NC[~select_N][:, c : c + 1])
        )
        out.append(Detection(u % n_units, -1 if u >= n_units else 1, float(best_thr[c, u]), f1, p, r))
    return out


def _scores(pred_NU: Tensor, labels_NC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """F1, precision and recall [C, U] of every unit's predictions for every concept."""
    pred = pred_NU.float()
    tp = labels_NC.T @ pred
    predicted = pred.sum(0, keepdim=True)
    actual = labels_NC.sum(0)[:, None]
    precision = tp / predicted.clamp_min(1)
    recall = tp / actual.clamp_min(1)
    f1 = 2 * tp / (predicted + actual).clamp_min(1)
    return f1, precision, recall

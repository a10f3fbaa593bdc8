"""saev's bench metrics against visaebench 0.1.0 on the same codes: Moran's I (M1), sparse probing (M4),
monosemanticity (M5) and absorption (M7) agree to 1e-4. Skipped when visaebench is not installed.

visaebench takes an SAE and ViT activations and encodes them itself; the tests hand it a tiny
SAE (a fixed linear map and ReLU, computed in float64 so codes do not depend on batch shapes)
and give saev the codes of the same map.
"""

import numpy as np
import pytest
import torch

from tests.conftest import ORACLE_HINT, import_or_skip

pytestmark = pytest.mark.oracle

visaebench = import_or_skip("visaebench", ORACLE_HINT)

from visaebench.metrics.concept_detection.monosemanticity import MonosemanticityScore  # noqa: E402
from visaebench.metrics.concept_detection.sparse_probing import SparseProbing  # noqa: E402
from visaebench.metrics.disentanglement.absorption import FeatureAbsorption  # noqa: E402
from visaebench.metrics.spatial_coherence.localization import FeatureLocalization  # noqa: E402

from saev.bench import absorption, monosemanticity, probing, spatial  # noqa: E402

GRID = (6, 6)
P = GRID[0] * GRID[1]
D = 24


class TinySAE:
    """ReLU(x W + b) with W's columns unit directions: latent j fires where direction j was painted."""

    def __init__(self, d_sae: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.functional.normalize(torch.randn(D, d_sae, generator=g, dtype=torch.float64), dim=0)
        self.b = torch.full((d_sae,), -0.3, dtype=torch.float64)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.double() @ self.w + self.b).float()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z.double() @ self.w.T).float()

    def codes(self, acts_NPD: torch.Tensor) -> torch.Tensor:
        n = len(acts_NPD)
        return self.encode(acts_NPD.reshape(n * P, D)).reshape(n, P, -1)


def blob_acts(sae: TinySAE, n: int, seed: int, labels_N: np.ndarray | None = None) -> torch.Tensor:
    """[n, P, D] activations: each image paints 3 latents' directions on rectangles (spatial codes),
    one more on scattered patches, plus noise. With labels, the class's latent is painted too."""
    rng = np.random.default_rng(seed)
    d_sae = sae.w.shape[1]
    acts = rng.normal(scale=0.05, size=(n, GRID[0], GRID[1], D))
    for i in range(n):
        painted = list(rng.choice(d_sae, size=3, replace=False))
        if labels_N is not None:
            painted.append(int(labels_N[i]) % d_sae)
        for j in painted:
            h, w = rng.integers(2, 5, size=2)
            r, c = rng.integers(0, GRID[0] - h + 1), rng.integers(0, GRID[1] - w + 1)
            acts[i, r : r + h, c : c + w] += rng.uniform(0.8, 1.5) * sae.w[:, j].numpy()
        scattered = rng.random((GRID[0], GRID[1])) < 0.3
        acts[i][scattered] += sae.w[:, rng.integers(d_sae)].numpy()
    return torch.from_numpy(acts.reshape(n, P, D)).float()


@pytest.mark.parametrize(("cap", "min_images"), [(None, 4), (6, 3)])
def test_morans_i_matches_feature_localization(cap, min_images):
    sae = TinySAE(d_sae=12)
    acts = blob_acts(sae, 90, seed=1)
    theirs = FeatureLocalization(
        grid_size=GRID,
        min_active_patches=5,
        max_active_fraction=0.9,
        min_images_per_feature=min_images,
        max_features=10_000,
        max_images_per_feature=cap if cap is not None else 10**9,
        # visaebench checks its cap once per image batch; one image per batch makes it the exact cap.
        image_batch_size=1,
    ).compute(sae, acts, device="cpu")
    codes = sae.codes(acts)
    ours = spatial.morans_i(
        [codes[:50], codes[50:]],
        GRID,
        adjacency="queen",
        min_active=5,
        max_active_fraction=0.9,
        min_images=min_images,
        max_images_per_latent=cap,
        resamples=20,
    )[0]
    assert ours.details["evaluable_latents"] == theirs.metadata["num_evaluable_features"] > 5
    assert ours.estimate.value == pytest.approx(theirs.value, rel=1e-4)
    assert ours.estimate.value > 0.3  # painted rectangles are spatially coherent


def test_morans_i_matches_feature_localization_default_batches():
    # Without a binding cap, visaebench's 64-image batches change nothing.
    sae = TinySAE(d_sae=10, seed=3)
    acts = blob_acts(sae, 150, seed=4)
    theirs = FeatureLocalization(grid_size=GRID, min_images_per_feature=5, max_features=10_000).compute(
        sae, acts, device="cpu"
    )
    ours = spatial.morans_i(
        [sae.codes(acts)], GRID, adjacency="queen", min_active=5, min_images=5, max_images_per_latent=200
    )[0]
    assert ours.estimate.value == pytest.approx(theirs.value, rel=1e-4)


def pooled(sae: TinySAE, acts: torch.Tensor) -> np.ndarray:
    return sae.codes(acts).amax(dim=1).numpy()


def class_labels(n: int, classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % classes).astype(np.int64)


@pytest.mark.parametrize("classes", [2, 5])
def test_visaebench_auc_matches_sparse_probing(classes):
    sae = TinySAE(d_sae=64, seed=5)
    labels = class_labels(150, classes, seed=6)
    acts = blob_acts(sae, 150, seed=7, labels_N=labels * 7)
    theirs = SparseProbing().compute(sae, acts, labels=labels, device="cpu", seed=42)
    ours = probing.visaebench_auc(pooled(sae, acts), labels)
    assert ours == pytest.approx(theirs.value, abs=1e-4)
    assert 0.5 < ours <= 1.0


class TableBackbone:
    """An evaluator 'backbone' whose images are row indices of a fixed embedding table."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def extract_activations(self, images, *, layer: int = -1) -> torch.Tensor:
        return self.table[torch.as_tensor(list(images))][:, None, :]


@pytest.mark.parametrize(("max_features", "seed"), [(10_000, 42), (20, 42), (20, 7)])
def test_monosemanticity_matches_visaebench(max_features, seed):
    sae = TinySAE(d_sae=48, seed=8)
    n = 120
    acts = blob_acts(sae, n, seed=9)
    codes = pooled(sae, acts)
    # Embeddings that follow the codes loosely, so the scores are neither 0 nor 1.
    rng = np.random.default_rng(10)
    table = torch.from_numpy(codes @ rng.normal(size=(48, 16)) + rng.normal(scale=2.0, size=(n, 16))).float()
    theirs = MonosemanticityScore(top_k_images=16, max_features=max_features).compute(
        sae, acts, images=list(range(n)), evaluator_backbone=TableBackbone(table), device="cpu", seed=seed
    )
    ours = monosemanticity.monosemanticity(
        codes, table.numpy(), top_k=16, max_latents=max_features, seed=seed, resamples=20
    )
    assert ours.details["scored_with_pairs"] == theirs.metadata["num_features_scored"] > 10
    assert ours.estimate.value == pytest.approx(theirs.value, rel=1e-4)


def test_absorption_matches_feature_absorption():
    sae = TinySAE(d_sae=40, seed=11)
    n = 240
    labels = class_labels(n, 10, seed=12)
    # Classes 0-4 paint a latent of their own; classes 5-9 all paint latent 39, a shared parent.
    latent = np.where(labels < 5, labels * 3, 39)
    acts = blob_acts(sae, n, seed=13, labels_N=latent)
    groups = {"own": [0, 1, 2, 3, 4], "shared": [5, 6, 7, 8, 9], "mixed": [3, 4, 5, 6]}
    theirs = FeatureAbsorption(min_group_size=3).compute(
        sae,
        acts,
        labels=labels,
        sibling_groups={name: {"class_indices": c, "hierarchy_depth": 1} for name, c in groups.items()},
        device="cpu",
        seed=42,
    )
    hierarchy = absorption.Hierarchy(tuple(f"class{i}" for i in range(10)), labels, groups)
    rate, gap, overlap = absorption.absorption(
        pooled(sae, acts), [hierarchy], min_group_size=3, min_items=3, seed=42, resamples=5
    )
    assert rate.details["pairs"] == theirs.metadata["num_tests"] == 14
    assert rate.estimate.value == pytest.approx(theirs.value, abs=1e-4)
    assert gap.estimate.value == pytest.approx(theirs.metadata["mean_f1_gap"], abs=1e-4)
    assert overlap.estimate.value == pytest.approx(theirs.metadata["mean_overlap"], abs=1e-4)
    ours_pairs = {(p["group"], p["class_index"]): p["absorbed"] for p in rate.details["per_pair"]}
    their_pairs = {(p["group"], p["class_idx"]): p["absorbed"] for p in theirs.metadata["per_pair_results"]}
    assert ours_pairs == their_pairs
    assert 0 < rate.estimate.value < 1

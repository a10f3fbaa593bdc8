"""The scorecard's metric modules on small synthetic codes whose answers are known: Moran's I
(saev.bench.spatial), k-sparse probes (probing), monosemanticity and absorption."""

import math

import numpy as np
import pytest
import torch

from saev.bench import absorption, monosemanticity, probing, spatial, stats


def contains(estimate: stats.Estimate, tol: float = 1e-9) -> bool:
    return estimate.low - tol <= estimate.value <= estimate.high + tol


# ---------------------------------------------------------------- Moran's I


def reference_morans(x_P: np.ndarray, grid: tuple[int, int], queen: bool) -> float:
    """Moran's I from its definition, with the neighbour matrix written out cell by cell."""
    rows, cols = grid
    w = np.zeros((rows * cols, rows * cols))
    for r in range(rows):
        for c in range(cols):
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    diagonal = dr != 0 and dc != 0
                    if (dr, dc) == (0, 0) or (diagonal and not queen):
                        continue
                    if 0 <= r + dr < rows and 0 <= c + dc < cols:
                        w[r * cols + c, (r + dr) * cols + c + dc] = 1
    xc = x_P - x_P.mean()
    return len(x_P) / w.sum() * (xc @ w @ xc) / (xc @ xc)


def reference_score(
    codes_NPS: np.ndarray, grid, queen, min_active, max_active, min_images
) -> tuple[float, int]:
    per_latent = []
    for s in range(codes_NPS.shape[2]):
        values = []
        for x in codes_NPS[:, :, s]:
            active = int((x != 0).sum())
            if min_active <= active <= max_active and ((x - x.mean()) ** 2).sum() > 1e-10:
                values.append(reference_morans(x, grid, queen))
        if len(values) >= min_images:
            per_latent.append(np.mean(values))
    return float(np.mean(per_latent)), len(per_latent)


def blob_codes(n: int, grid=(8, 8), size=3, seed=0) -> torch.Tensor:
    """One latent: a size x size square of positive values at a random place in each image."""
    rng = np.random.default_rng(seed)
    codes = np.zeros((n, grid[0], grid[1], 1), np.float32)
    for i in range(n):
        r, c = rng.integers(0, grid[0] - size + 1), rng.integers(0, grid[1] - size + 1)
        codes[i, r : r + size, c : c + size, 0] = rng.uniform(0.5, 2.0, size=(size, size))
    return torch.from_numpy(codes.reshape(n, grid[0] * grid[1], 1))


def checkerboard(n: int, grid=(8, 8)) -> torch.Tensor:
    board = np.indices(grid).sum(axis=0) % 2
    return torch.from_numpy(
        np.broadcast_to(board.reshape(1, -1, 1), (n, grid[0] * grid[1], 1)).astype(np.float32)
    )


def test_checkerboard_is_minus_one_with_rook_adjacency():
    (metric, share) = spatial.morans_i([checkerboard(10)], (8, 8), resamples=20)
    assert metric.name == "morans_i" and metric.group == "spatial" and metric.higher_is_better
    assert metric.estimate.value == pytest.approx(-1.0)
    assert metric.estimate.low == pytest.approx(-1.0) and metric.estimate.high == pytest.approx(-1.0)
    assert metric.details["evaluable_latents"] == 1 and metric.details["adjacency"] == "rook"
    assert share.name == "localized_share" and share.estimate.value == 0.0


def test_a_blob_is_localised_and_its_shuffled_copy_is_not():
    (metric, share) = spatial.morans_i([blob_codes(80)], (8, 8), resamples=50)
    assert metric.estimate.value > 0.5
    assert contains(metric.estimate)
    # A random arrangement has expected Moran's I -1/(P-1).
    assert metric.baseline_name == "shuffled patches"
    assert abs(metric.baseline.value - (-1 / 63)) < 0.05
    assert metric.baseline.high < metric.estimate.low
    assert share.estimate.value == 1.0 and share.baseline.value == 0.0


@pytest.mark.parametrize("adjacency", ["rook", "queen"])
def test_morans_i_matches_the_definition_and_the_shuffled_copy(adjacency):
    rng = np.random.default_rng(1)
    n, grid, d_sae = 30, (5, 6), 7
    dense = rng.exponential(size=(n, 30, d_sae)) * (rng.random((n, 30, d_sae)) < 0.25)
    # Smooth half of the latents along the grid so the values spread out.
    dense[:, :, :3] = np.repeat(dense[:, ::2, :3], 2, axis=1)[:, :30]
    codes = torch.from_numpy(dense.astype(np.float32))
    (metric, _) = spatial.morans_i(
        [codes], grid, adjacency=adjacency, min_active=2, min_images=3, resamples=10
    )
    value, evaluable = reference_score(dense, grid, adjacency == "queen", 2, int(0.9 * 30), 3)
    assert metric.estimate.value == pytest.approx(value, rel=1e-5)
    assert metric.details["evaluable_latents"] == evaluable

    # The baseline is the score of each image's patches moved to perm[p], perm from default_rng(seed).
    perm = np.random.default_rng(0).random((n, 30)).argsort(axis=1)
    shuffled = np.zeros_like(dense)
    for i in range(n):
        shuffled[i, perm[i]] = dense[i]
    base, _ = reference_score(shuffled, grid, adjacency == "queen", 2, int(0.9 * 30), 3)
    assert metric.baseline.value == pytest.approx(base, rel=1e-5)


def test_block_boundaries_change_nothing():
    rng = np.random.default_rng(2)
    codes = torch.from_numpy(
        (rng.exponential(size=(40, 16, 5)) * (rng.random((40, 16, 5)) < 0.4)).astype(np.float32)
    )
    one = spatial.morans_i([codes], (4, 4), min_images=3, resamples=30, seed=3)
    many = spatial.morans_i(
        (codes[i : i + 7] for i in range(0, 40, 7)), (4, 4), min_images=3, resamples=30, seed=3
    )
    for a, b in zip(one, many, strict=True):
        assert a.estimate == b.estimate and a.baseline == b.baseline


def test_filters_min_images_and_the_cap():
    blob, board = blob_codes(4), checkerboard(6)
    codes = torch.cat([blob, board])  # 4 localised images, then 6 checkerboards
    blob_value = spatial.morans_i([blob], (8, 8), min_images=4, resamples=0)[0].estimate.value
    capped = spatial.morans_i([codes], (8, 8), min_images=4, max_images_per_latent=4, resamples=0)[0]
    assert capped.estimate.value == pytest.approx(blob_value)
    full = spatial.morans_i([codes], (8, 8), min_images=4, resamples=0)[0]
    assert full.estimate.value == pytest.approx((4 * blob_value - 6) / 10)
    # Fewer valid images than min_images: nothing is evaluable and the value is None, not NaN.
    none = spatial.morans_i([blob], (8, 8), min_images=5, resamples=10)[0]
    assert none.estimate.value is None and none.estimate.low is None
    assert none.details["evaluable_latents"] == 0


def test_background_latents_are_filtered():
    # Active on every patch: over max_active_fraction, so never valid.
    everywhere = blob_codes(10) + 1.0
    metric = spatial.morans_i([everywhere], (8, 8), resamples=5)[0]
    assert metric.estimate.value is None
    # Active on one patch: under min_active.
    single = torch.zeros(10, 64, 1)
    single[:, 5, 0] = 1.0
    assert spatial.morans_i([single], (8, 8), resamples=5)[0].estimate.value is None


def test_adjacency_matrix_counts_neighbours():
    rook, queen = spatial.adjacency_matrix((3, 4), "rook"), spatial.adjacency_matrix((3, 4), "queen")
    assert rook.sum() == 2 * (3 * 3 + 2 * 4)  # horizontal + vertical edges, both directions
    assert queen.sum() == rook.sum() + 2 * 2 * (2 * 3)  # plus both diagonals
    assert torch.equal(rook, rook.T) and rook.diagonal().sum() == 0


# ---------------------------------------------------------------- sparse probes


def probe_data(n=200, d_sae=30, d_vit=16, seed=0):
    rng = np.random.default_rng(seed)
    pooled = np.maximum(rng.normal(size=(n, d_sae)) - 1.0, 0)
    dense = rng.normal(size=(n, d_vit))
    return rng, pooled, dense


def test_a_latent_equal_to_the_label_probes_perfectly():
    rng, pooled, dense = probe_data()
    label = rng.integers(0, 2, len(pooled))
    pooled[:, 7] = label
    dense[:, 0] += 2.0 * label  # the dense model sees the concept, less cleanly
    metrics = probing.sparse_probing(pooled, dense, {"concept": label}, resamples=50)
    by_name = {m.name: m for m in metrics}
    assert list(by_name) == ["probe_k1", "probe_k2", "probe_k5", "probe_k20", "faithfulness_gap"]
    k1 = by_name["probe_k1"]
    assert k1.group == "probing" and k1.higher_is_better
    assert k1.estimate.value == 1.0 and k1.estimate.low == 1.0 and k1.estimate.high == 1.0
    assert k1.estimate.n == 40  # the test split of 200 images
    assert k1.baseline_name == "dense probe on ViT activations"
    assert 0.6 < k1.baseline.value < 1.0 and contains(k1.baseline)
    gap = by_name["faithfulness_gap"]
    assert not gap.higher_is_better
    assert gap.estimate.value == pytest.approx(k1.baseline.value - by_name["probe_k20"].estimate.value)
    assert contains(gap.estimate)


def test_tasks_are_skipped_with_reasons_and_unlabelled_images_ignored():
    rng, pooled, dense = probe_data()
    n = len(pooled)
    half = np.where(np.arange(n) < 100, rng.integers(0, 2, n), -1)
    tasks = {
        "half": half,
        "one_class": np.zeros(n, np.int64),
        "few": np.where(np.arange(n) < 8, np.arange(n) % 2, -1),
    }
    metrics = probing.sparse_probing(pooled, dense, tasks, ks=(1, 3), resamples=20)
    skipped = metrics[0].details["skipped"]
    assert set(skipped) == {"one_class", "few"}
    assert "2 classes" in skipped["one_class"] and "8 labelled images" in skipped["few"]
    assert metrics[0].details["tasks"] == 1
    assert metrics[0].estimate.n == 20  # a fifth of the 100 labelled images
    assert 0.0 <= metrics[0].estimate.value <= 1.0 and contains(metrics[0].estimate)


def test_exclusive_tasks_report_the_visaebench_auc():
    rng, pooled, dense = probe_data(n=150)
    label = np.arange(150) % 3
    pooled[:, :3] = np.eye(3)[label] * 2.0  # one latent per class
    metrics = probing.sparse_probing(pooled, dense, {"classes": label}, ks=(1, 3), resamples=20)
    assert metrics[1].estimate.value == 1.0  # three latents separate three classes
    auc = metrics[0].details["visaebench_auc"]["classes"]
    assert auc == pytest.approx(probing.visaebench_auc(pooled, label, seed=0))
    assert 0.9 < auc <= 1.0


def test_probe_accuracy_is_a_mean_over_tasks():
    rng, pooled, dense = probe_data()
    a, b = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    pooled[:, 0] = a
    one = {
        m.name: m.estimate.value
        for m in probing.sparse_probing(pooled, dense, {"a": a}, ks=(1,), resamples=0)
    }
    two = probing.sparse_probing(pooled, dense, {"a": a, "b": b}, ks=(1,), resamples=30)
    per_task = two[0].details["accuracy"]
    assert per_task["a"] == one["probe_k1"] == 1.0
    assert two[0].estimate.value == pytest.approx((per_task["a"] + per_task["b"]) / 2)
    assert contains(two[0].estimate)


def test_no_tasks_gives_none():
    _, pooled, dense = probe_data()
    metrics = probing.sparse_probing(pooled, dense, {}, resamples=10)
    assert all(m.estimate.value is None for m in metrics)


# ---------------------------------------------------------------- monosemanticity


def reference_ms(pooled: np.ndarray, emb: np.ndarray, k: int) -> float:
    """Pach et al.'s score written as the loops of its definition."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    scores = []
    for j in np.flatnonzero(pooled.max(axis=0) > 0):
        col = pooled[:, j]
        top = np.argsort(-col, kind="stable")[:k]
        span = (col.max() - col.min()) or 1.0
        w = (col[top] - col.min()) / span
        numer = denom = 0.0
        for a in range(k):
            for b in range(a + 1, k):
                numer += w[a] * w[b] * emb[top[a]] @ emb[top[b]]
                denom += w[a] * w[b]
        if denom > 0:
            scores.append(numer / denom)
    return float(np.mean(scores))


def test_latents_whose_top_images_share_an_embedding_score_one():
    rng = np.random.default_rng(0)
    n, d_sae = 80, 4
    owner = np.arange(n) % d_sae
    pooled = np.zeros((n, d_sae))
    pooled[np.arange(n), owner] = rng.uniform(0.5, 2.0, n)
    emb = np.eye(8)[owner] * rng.uniform(0.5, 3.0, (n, 1))  # same direction, any scale
    metric = monosemanticity.monosemanticity(pooled, emb, top_k=16, resamples=30)
    assert metric.name == "monosemanticity" and metric.group == "monosemanticity" and metric.higher_is_better
    assert metric.estimate.value == pytest.approx(1.0)
    assert metric.estimate.low == pytest.approx(1.0) and metric.estimate.high == pytest.approx(1.0)
    # Random images: a pair shares an embedding with chance 19/79.
    assert metric.baseline_name == "random images"
    assert metric.baseline.value == pytest.approx((n / d_sae - 1) / (n - 1))


def test_monosemanticity_matches_the_definition():
    rng = np.random.default_rng(1)
    pooled = np.maximum(rng.normal(size=(120, 30)) - 0.8, 0)
    emb = rng.normal(size=(120, 6)) + pooled[:, :6]
    metric = monosemanticity.monosemanticity(pooled, emb, top_k=10, resamples=40)
    assert metric.estimate.value == pytest.approx(reference_ms(pooled, emb, 10), rel=1e-6)
    assert contains(metric.estimate) and contains(metric.baseline)
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = e @ e.T
    assert metric.baseline.value == pytest.approx((cos.sum() - 120) / (120 * 119))


def test_monosemanticity_resamples_are_multisets_without_self_pairs():
    rng = np.random.default_rng(2)
    n, k = 40, 5
    pooled = np.maximum(rng.normal(size=(n, 6)), 0)
    emb = rng.normal(size=(n, 4))
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    metric = monosemanticity.monosemanticity(pooled, emb, top_k=k, resamples=25, seed=4)

    def brute(w):
        drawn = np.flatnonzero(w > 0)
        scores = []
        for j in range(pooled.shape[1]):
            col = pooled[:, j]
            lo, hi = col[drawn].min(), col[drawn].max()
            copies = [i for i in drawn[np.argsort(-col[drawn], kind="stable")] for _ in range(int(w[i]))][:k]
            u = {i: (col[i] - lo) / ((hi - lo) or 1.0) for i in copies}
            numer = denom = 0.0
            for a in range(k):
                for b in range(a + 1, k):
                    if copies[a] != copies[b]:  # copies of one image are not a pair
                        numer += u[copies[a]] * u[copies[b]] * e[copies[a]] @ e[copies[b]]
                        denom += u[copies[a]] * u[copies[b]]
            if denom > 0:
                scores.append(numer / denom)
        return float(np.mean(scores))

    expected = stats.bootstrap(brute, n, resamples=25, seed=4)
    assert metric.estimate.value == pytest.approx(expected.value)
    assert metric.estimate.low == pytest.approx(expected.low)
    assert metric.estimate.high == pytest.approx(expected.high)


def test_dead_latents_and_subsampling():
    rng = np.random.default_rng(3)
    pooled = np.maximum(rng.normal(size=(50, 40)), 0)
    pooled[:, :10] = 0
    emb = rng.normal(size=(50, 5))
    metric = monosemanticity.monosemanticity(pooled, emb, max_latents=12, resamples=5)
    assert metric.details["live_latents"] == 30 and metric.details["scored_latents"] == 12
    dead = monosemanticity.monosemanticity(np.zeros((50, 3)), emb, resamples=5)
    assert dead.estimate.value is None and dead.details["scored_latents"] == 0


# ---------------------------------------------------------------- absorption


def hierarchy_codes(mode: str, per_class=20, d_sae=40, seed=0):
    """3 sibling classes under one parent. 'own': each child fires a latent of its own. 'shared':
    only a parent latent fires, for every child alike. 'split': child 0 is the only class with both
    latent 1 (shared with child 1) and latent 2 (shared with child 2), so one latent cannot single
    it out and two can."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), per_class)
    codes = np.zeros((len(labels), d_sae))
    if mode == "own":
        codes += rng.uniform(0, 0.05, codes.shape)  # small distinct noise: no ties in the rankings
        codes[np.arange(len(labels)), labels] += rng.uniform(1.0, 2.0, len(labels))
    elif mode == "shared":
        codes[:, 0] = rng.uniform(1.0, 2.0, len(labels))
    else:
        codes += rng.uniform(0, 0.05, codes.shape)
        codes[:, 1] += np.isin(labels, [0, 1]) * rng.uniform(1.0, 1.5, len(labels))
        codes[:, 2] += np.isin(labels, [0, 2]) * rng.uniform(1.0, 1.5, len(labels))
    return codes, absorption.Hierarchy(("a", "b", "c"), labels, {"parent": [0, 1, 2]})


def test_children_with_their_own_latents_are_not_absorbed():
    codes, h = hierarchy_codes("own")
    rate, gap, overlap = absorption.absorption(codes, [h], top_k=3, resamples=20)
    assert [m.name for m in (rate, gap, overlap)] == [
        "absorption_rate",
        "absorption_f1_gap",
        "absorption_overlap",
    ]
    assert all(m.group == "absorption" and m.higher_is_better is False for m in (rate, gap, overlap))
    assert rate.estimate.value == 0.0 and rate.details["pairs"] == 3
    assert gap.estimate.value == pytest.approx(0.0)
    assert overlap.estimate.value == pytest.approx(0.2)  # own latent shared with the group's 3: 1 of 5
    assert all(p["f1_primary"] == 1.0 for p in rate.details["per_pair"])
    assert rate.details["resamples"] == 20


def test_one_latent_for_all_children_is_absorbed():
    codes, h = hierarchy_codes("shared")
    rate, _, overlap = absorption.absorption(codes, [h], resamples=10)
    assert rate.estimate.value == 1.0 and overlap.estimate.value == 1.0
    assert contains(rate.estimate)


def test_a_child_split_over_two_latents_shows_an_f1_gap():
    codes, h = hierarchy_codes("split")
    rate, gap, _ = absorption.absorption(codes, [h], top_k=3, resamples=15)
    pair = {p["child"]: p for p in rate.details["per_pair"]}
    assert pair["a"]["f1_primary"] < 0.8 and pair["a"]["f1_expanded"] > 0.9
    assert pair["a"]["absorbed"] and pair["a"]["f1_gap"] > 0.1
    assert rate.estimate.value > 0 and contains(rate.estimate) and contains(gap.estimate)


@pytest.mark.slow
def test_absorption_skips_small_groups_and_classes():
    codes, h = hierarchy_codes("own")
    labels = h.labels_N.copy()
    labels[:18] = -1  # class 0 keeps 2 items: under min_items
    small = absorption.Hierarchy(h.classes, labels, {"parent": [0, 1, 2], "pair": [1, 2], "lonely": [0]})
    rate, _, _ = absorption.absorption(codes, [small], top_k=3, min_group_size=2, resamples=60)
    assert {(p["group"], p["child"]) for p in rate.details["per_pair"]} == {
        ("parent", "b"),
        ("parent", "c"),
        ("pair", "b"),
        ("pair", "c"),
    }
    assert rate.details["resamples"] == absorption.MAX_RESAMPLES
    tiny = absorption.Hierarchy(
        h.classes, np.where(np.arange(len(labels)) % 10 == 0, h.labels_N, -1), h.groups
    )
    none = absorption.absorption(codes, [tiny], resamples=5)[0]  # 6 items in the group: under 10
    assert none.estimate.value is None and none.details["pairs"] == 0
    assert not any(isinstance(v, float) and math.isnan(v) for v in none.details.values())

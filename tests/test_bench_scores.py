"""saev bench's reconstruction, sparsity, detection and stability metrics, against values worked by hand."""

import math

import numpy as np
import pytest
import torch

from saev import concepts
from saev.bench import detection as detection_mod
from saev.bench import stability as stability_mod
from saev.bench import stats
from saev.bench.detection import detection
from saev.bench.reconstruction import TokenSums, fvu, token_sums, visaebench_fvu
from saev.bench.sparsity import _FiringSums, sparsity
from saev.bench.stability import stability
from saev.nn.evaluation import DEAD_DEFINITION, DENSE_DEFINITION
from tests.conftest import ORACLE_HINT, import_or_skip

R = 50  # resamples: enough for an interval, quick


def contains(est: stats.Estimate, value: float, tol: float = 1e-9) -> bool:
    return est.low is not None and est.high is not None and est.low - tol <= value <= est.high + tol


# Reconstruction


def _tokens(seed: int = 0, n: int = 12, p: int = 5, d: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Per-dimension offsets that a scalar mean would not remove.
    return torch.randn(n, p, d, generator=gen) + torch.tensor([3.0, -2.0, 0.5, 1.0])[:d]


def test_fvu_perfect_reconstruction_is_zero():
    x = _tokens()
    metric = fvu(token_sums(x, x), resamples=R)
    assert (metric.name, metric.group, metric.higher_is_better) == ("fvu", "reconstruction", False)
    assert metric.estimate.value == 0 and metric.estimate.low == 0 and metric.estimate.high == 0
    assert metric.estimate.n == 12 and metric.details["tokens"] == 60 and metric.details["fve"] == 1


def test_fvu_of_the_per_dimension_mean_is_one():
    x = _tokens()
    x_hat = x.reshape(-1, x.shape[-1]).mean(0).expand_as(x)
    metric = fvu(token_sums(x, x_hat), resamples=R)
    assert metric.estimate.value == pytest.approx(1, abs=1e-12)
    # A resample's own mean fits its tokens better than the sample's mean does, so every resample
    # scores above 1: at this boundary the percentile interval lies wholly above the value.
    assert 1 < metric.estimate.low < metric.estimate.high


def test_fvu_by_hand():
    # Two images of one 1-d token, 0 and 2: mean 1, total variance 2.
    x = torch.tensor([[[0.0]], [[2.0]]])
    assert fvu(token_sums(x, torch.tensor([[[1.0]], [[1.0]]])), resamples=R).estimate.value == pytest.approx(
        1
    )
    assert fvu(token_sums(x, torch.tensor([[[0.0]], [[1.0]]])), resamples=R).estimate.value == pytest.approx(
        0.5
    )


def test_fvu_is_one_minus_saev_evaluate_fve():
    from saev.nn.config import SaeConfig
    from saev.nn.evaluation import Accumulator
    from saev.nn.modeling import SparseAutoencoder

    sae = SparseAutoencoder(SaeConfig(d_vit=4, d_sae=16, seed=1))
    x = _tokens(n=10)
    acc = Accumulator(sae)
    acc.add(x.reshape(-1, 4))
    with torch.inference_mode():
        x_hat = sae.decode_normalized(sae.encode_normalized(x))
    value = fvu(token_sums(x, x_hat), resamples=R).estimate.value
    assert value == pytest.approx(1 - acc.result().fve, rel=1e-6)


def test_fvu_undefined_without_variance():
    x = torch.ones(3, 2, 4)
    metric = fvu(token_sums(x, x * 0.5), resamples=R)
    assert metric.estimate.value is None and metric.estimate.low is None and metric.details["fve"] is None
    assert fvu(TokenSums.concat([]), resamples=R).estimate.value is None


def test_token_sums_concat_is_one_batch():
    x, x_hat = _tokens(), _tokens(seed=1)
    whole = token_sums(x, x_hat)
    parts = TokenSums.concat([token_sums(x[:5], x_hat[:5]), token_sums(x[5:], x_hat[5:])])
    for name in ("sse_N", "sum_sq_N", "sum_x_ND", "tokens_N"):
        np.testing.assert_allclose(getattr(parts, name), getattr(whole, name))
    assert whole.tokens_N.tolist() == [5.0] * 12 and whole.sum_x_ND.shape == (12, 4)
    np.testing.assert_allclose(whole.sse_N, (x - x_hat).double().pow(2).sum((1, 2)).numpy())
    assert fvu(parts, resamples=R).estimate == fvu(whole, resamples=R).estimate


def test_visaebench_fvu_by_hand():
    # x = [[1, -1], [3, 1]]: visaebench's Var(x) = 12/2 - (4/2)^2 = 2; saev's SST = 4 (means 2 and 0).
    x = torch.tensor([[1.0, -1.0], [3.0, 1.0]])
    assert visaebench_fvu(x, torch.zeros_like(x)) == pytest.approx(1)
    assert fvu(token_sums(x[:, None], torch.zeros(2, 1, 2)), resamples=R).estimate.value == pytest.approx(
        12 / 4
    )
    # A constant error of 1 in every dimension: their Var(residual) = 4/2 - (4/2)^2 = -2, so FVU -1.
    assert visaebench_fvu(x, x - 1) == pytest.approx(-1)
    assert fvu(token_sums(x[:, None], x[:, None] - 1), resamples=R).estimate.value == pytest.approx(1)
    assert visaebench_fvu(torch.ones(3, 2), torch.zeros(3, 2)) == math.inf


@pytest.mark.slow
@pytest.mark.oracle
def test_visaebench_fvu_matches_visaebench():
    metric = import_or_skip("visaebench.metrics.reconstruction.fvu", ORACLE_HINT)
    from saev.nn.config import SaeConfig
    from saev.nn.modeling import SparseAutoencoder

    sae = SparseAutoencoder(SaeConfig(d_vit=6, d_sae=24, seed=2))
    with torch.no_grad():
        sae.b_dec.copy_(torch.linspace(-1, 1, 6))
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(0)) * 2 + torch.linspace(-3, 3, 6)
    with torch.inference_mode():
        theirs = metric.FVU(batch_size=37).compute(sae, x, device="cpu").value
        x_hat = sae.decode(sae.encode(x))
    assert visaebench_fvu(x, x_hat) == pytest.approx(theirs, rel=1e-4)
    # Same data, saev's definition: not the same number (per-dimension offsets are not variance).
    assert fvu(token_sums(x[:, None], x_hat[:, None]), resamples=R).estimate.value != pytest.approx(
        theirs, rel=1e-2
    )


# Sparsity


def _fires() -> tuple[np.ndarray, np.ndarray]:
    # 3 images of 4 tokens. Latent 0 never fires; 1 fires on 1/12 of the tokens (not dense);
    # 2 on 6/12 and 3 on 2/12 (both dense, above 10%).
    fires = np.array([[0, 1, 2, 1], [0, 0, 2, 1], [0, 0, 2, 0]], dtype=np.int32)
    return fires, np.full(3, 4)


def test_sparsity_by_hand():
    l0, dead, dense = sparsity(*_fires(), resamples=R)
    assert [m.name for m in (l0, dead, dense)] == ["l0", "dead", "dense"]
    assert (l0.higher_is_better, dead.higher_is_better, dense.higher_is_better) == (None, False, False)
    assert {m.group for m in (l0, dead, dense)} == {"sparsity"}
    assert l0.estimate.value == pytest.approx(9 / 12)
    assert dead.estimate.value == 0.25 and dead.details["count"] == 1
    assert dense.estimate.value == 0.5 and dense.details["count"] == 2
    assert DEAD_DEFINITION in dead.details["definition"] and DENSE_DEFINITION in dense.details["definition"]
    for m in (l0, dead, dense):
        assert contains(m.estimate, m.estimate.value) and m.estimate.n == 3


def test_sparsity_interval_is_the_plain_bootstrap():
    rng = np.random.default_rng(0)
    tokens = np.full(40, 16)
    fires = rng.binomial(16, rng.uniform(0, 0.3, 300) * (rng.random(300) < 0.8), size=(40, 300))

    def dead_share(w: np.ndarray) -> float:
        return float(((w @ fires) == 0).mean())

    def dense_share(w: np.ndarray) -> float:
        return float(((w @ fires) / (w @ tokens) > 0.1).mean())

    _, dead, dense = sparsity(fires, tokens, resamples=R, seed=3)
    assert dead.estimate == stats.bootstrap(dead_share, 40, resamples=R, seed=3)
    assert dense.estimate == stats.bootstrap(dense_share, 40, resamples=R, seed=3)
    # A weighting the lookup has not seen is summed directly.
    sums, w = _FiringSums(fires, tokens.astype(float), R, 3), rng.random(40)
    np.testing.assert_allclose(sums(w)[0], w @ fires)
    assert sums(w)[1] == pytest.approx(w @ tokens)


def test_sparsity_refuses_impossible_counts():
    fires, tokens = _fires()
    with pytest.raises(ValueError):
        sparsity(fires, np.full(3, 1), resamples=R)
    with pytest.raises(ValueError):
        sparsity(-fires, tokens, resamples=R)
    with pytest.raises(ValueError):
        sparsity(fires, tokens[:2], resamples=R)


def test_sparsity_without_tokens_is_undefined():
    l0, dead, dense = sparsity(np.zeros((0, 5), np.int32), np.zeros(0), resamples=R)
    assert l0.estimate.value is None and dead.estimate.value is None and dense.estimate.value is None


# Detection


def _world(seed: int = 0, n: int = 24, p: int = 16, s: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse noise codes; latent 2 is concept 0's mask (value 1), latent 5 concept 1's (random values)."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, p, 3, generator=gen) < torch.tensor([0.3, 0.2, 0.1])
    codes = torch.rand(n, p, s, generator=gen) * (torch.rand(n, p, s, generator=gen) < 0.25)
    codes[..., 2] = masks[..., 0].float()
    codes[..., 5] = masks[..., 1] * (0.5 + torch.rand(n, p, generator=gen))
    return codes, masks


def test_detection_finds_a_latent_equal_to_the_mask():
    codes, masks = _world()
    f1, iou = detection([(codes, masks)], ["a", "b", "c"], resamples=R)
    assert (f1.name, iou.name, f1.group, f1.higher_is_better) == (
        "detection_f1",
        "detection_iou",
        "detection",
        True,
    )
    assert f1.details["latents"]["a"] == 2 and f1.details["latents"]["b"] == 5
    for name in ("a", "b"):
        d = f1.details["concepts"][name]
        assert (d["f1"], d["iou"], d["precision"], d["recall"], d["threshold"]) == (1, 1, 1, 1, 0)
        assert d["patches"] == int(masks[1::2, :, "ab".index(name)].sum())
    c = f1.details["concepts"]["c"]
    assert f1.estimate.value == pytest.approx((2 + c["f1"]) / 3)
    assert iou.estimate.value == pytest.approx((2 + c["iou"]) / 3)
    assert f1.estimate.n == 12 and f1.details["selection_images"] == 12
    assert contains(f1.estimate, f1.estimate.value) and contains(iou.estimate, iou.estimate.value)
    assert f1.baseline_name == "random latent" and f1.baseline.value < f1.estimate.value


def test_detection_by_hand():
    # One latent, 4 patches. Selection image: codes [1, 2, 0, 0], mask [1, 1, 0, 0]: threshold 0 is perfect.
    # Scoring image: codes [1, 0, 3, 0], mask [1, 1, 0, 0]: TP 1, FP 1, FN 1.
    codes = torch.tensor([[1.0, 2, 0, 0], [1, 0, 3, 0]])[..., None]
    masks = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)[..., None]
    f1, iou = detection([(codes, masks)], ["x"], resamples=R)
    assert f1.details["concepts"]["x"] == {
        "latent": 0,
        "threshold": 0.0,
        "f1": 0.5,
        "iou": 1 / 3,
        "precision": 0.5,
        "recall": 0.5,
        "patches": 2,
        "selection_f1": 1.0,
    }
    assert (f1.estimate.value, f1.estimate.low, f1.estimate.high) == (0.5, 0.5, 0.5)
    assert iou.estimate.value == pytest.approx(1 / 3)
    assert f1.baseline.value == 0.5  # the only latent is also the random one


def test_detection_is_best_detectors():
    """Same latents, thresholds and scores as `concepts.best_detectors` on the dense codes."""
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        n, p, s = 20, 9, 30
        masks = torch.rand(n, p, 4, generator=gen) < 0.25
        # Latents loosely tied to concepts, with ties in their values, plus noise.
        codes = torch.rand(n, p, s, generator=gen) * (torch.rand(n, p, s, generator=gen) < 0.3)
        codes[..., :4] += masks * torch.randint(0, 3, (n, p, 4), generator=gen) / 2
        names = ["w", "x", "y", "z"]
        f1, _ = detection([(codes[:7], masks[:7]), (codes[7:], masks[7:])], names, resamples=5)
        select = (torch.arange(n * p) // p) % 2 == 0
        ref = concepts.best_detectors(
            codes.reshape(-1, s), masks.reshape(-1, 4), select, signed=False, include_zero=True
        )
        for name, r in zip(names, ref, strict=True):
            mine = f1.details["concepts"][name]
            assert (mine["latent"], mine["threshold"]) == (r.unit, r.threshold)
            assert (mine["f1"] or 0) == pytest.approx(r.f1)
            assert (mine["precision"] or 0) == pytest.approx(r.precision)
            assert (mine["recall"] or 0) == pytest.approx(r.recall)


def test_detection_quantiles_are_torch_quantiles():
    rng = np.random.default_rng(0)
    for _ in range(50):
        b, p, s = (int(v) for v in rng.integers(1, 7, 3))
        values = rng.choice([0.0, 0.5, 1.0, 2.5], size=(b, p, s)) * (rng.random((b, p, s)) < rng.random())
        codes = torch.from_numpy((values + rng.random((b, p, s)) * (values > 1)).astype(np.float32))
        patches = detection_mod._Patches()
        patches.add(codes, torch.zeros(b, p, 1, dtype=torch.bool))
        patches.freeze(s, 1)
        ref = torch.quantile(codes.reshape(-1, s), torch.tensor(concepts.QUANTILES), dim=0)
        assert torch.equal(torch.from_numpy(patches.quantiles(s)), ref)


def test_detection_does_not_depend_on_blocks_or_order_of_reading():
    codes, masks = _world(seed=1)
    whole = detection([(codes, masks)], ["a", "b", "c"], resamples=R)
    split = detection(
        ((codes[i : i + 5], masks[i : i + 5]) for i in range(0, 24, 5)), ["a", "b", "c"], resamples=R
    )
    assert [m.to_json() for m in whole] == [m.to_json() for m in split]


def test_detection_select_chooses_which_images_pick():
    codes, masks = _world(seed=2)
    select = np.zeros(24, dtype=bool)
    select[:6] = True
    f1, _ = detection([(codes, masks)], ["a", "b", "c"], select=select, resamples=R)
    assert (f1.details["selection_images"], f1.details["scoring_images"], f1.estimate.n) == (6, 18, 18)
    assert f1.details["latents"]["a"] == 2
    with pytest.raises(ValueError):
        detection([(codes, masks)], ["a", "b", "c"], select=select[:10], resamples=R)


def test_detection_leaves_out_concepts_the_scoring_images_lack():
    codes, masks = _world(seed=3)
    masks[1::2, :, 2] = False  # concept c never shown on scoring images
    f1, iou = detection([(codes, masks)], ["a", "b", "c"], resamples=R)
    assert f1.details["scored_concepts"] == ["a", "b"]
    assert f1.estimate.value == 1 and iou.estimate.value == 1
    assert f1.details["concepts"]["c"]["patches"] == 0 and f1.details["concepts"]["c"]["recall"] is None
    masks[1::2] = False
    f1, iou = detection([(codes, masks)], ["a", "b", "c"], resamples=R)
    assert f1.estimate.value is None and iou.estimate.value is None and f1.estimate.n == 12


def test_detection_undefined_and_refused_inputs():
    codes, masks = _world()
    (f1, _) = detection([(codes[:1], masks[:1])], ["a", "b", "c"], resamples=R)  # one image: none scores
    assert f1.estimate.value is None and f1.details["latents"] == {}
    assert detection([], ["a"], resamples=R)[0].estimate == stats.Estimate(None, None, None, 0)
    with pytest.raises(ValueError):
        detection([(-codes, masks)], ["a", "b", "c"], resamples=R)
    with pytest.raises(ValueError):
        detection([(codes, masks)], ["a", "b"], resamples=R)
    with pytest.raises(ValueError):
        detection([(codes, masks)], ["a", "a", "b"], resamples=R)


# Stability


def _dictionary(s: int = 64, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(s, d, generator=torch.Generator().manual_seed(seed))


def test_stability_with_itself_and_a_permuted_copy_is_one():
    w = _dictionary()
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    for decoders in ([w, w], [w, 3 * w[perm]], [w, w[perm], w[perm.flip(0)]]):
        cosine, matched = stability(decoders, resamples=R)
        assert (cosine.name, matched.name, cosine.group) == (
            "stability_cosine",
            "stability_matched",
            "stability",
        )
        assert cosine.estimate.value == pytest.approx(1) and matched.estimate.value == 1
        assert cosine.estimate.unit == "latents" and cosine.estimate.n == 64
        assert contains(cosine.estimate, cosine.estimate.value, 1e-9)
        assert cosine.details["pairs"] == len(decoders) * (len(decoders) - 1) // 2
        assert cosine.baseline_name == "random dictionaries" and cosine.baseline.value < 0.9
        assert matched.baseline.value < 0.5


def test_stability_hungarian_and_best_match_by_hand(monkeypatch):
    # a = [e1, (e1 + 0.1 e2)/|.|], b = [e1, e2]. One-to-one: a0-b0 (1) and a1-b1 (0.0995) beat the swap
    # (0 + 0.995); each latent's best match is b0 for both.
    a = torch.tensor([[1.0, 0.0], [1.0, 0.1]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    small, large = 0.1 / math.sqrt(1.01), 1 / math.sqrt(1.01)
    cosine, matched = stability([a, b], resamples=R)
    assert cosine.estimate.value == pytest.approx((1 + small) / 2) and matched.estimate.value == 0.5
    assert cosine.details["matching"].startswith("Hungarian")
    monkeypatch.setattr(stability_mod, "HUNGARIAN_MAX", 1)
    cosine, matched = stability([a, b], resamples=R)
    assert cosine.estimate.value == pytest.approx((1 + large) / 2) and matched.estimate.value == 1
    assert "O(n^3)" in cosine.details["matching"]


def test_stability_zero_rows_count_as_unmatched():
    w = _dictionary()
    w[0] = 0
    cosine, matched = stability([w, w], resamples=R)
    assert cosine.estimate.value == pytest.approx(63 / 64) and matched.estimate.value == 63 / 64
    assert all(math.isfinite(v) for v in (cosine.estimate.low, cosine.estimate.high))


def test_stability_undefined_and_refused_inputs():
    cosine, matched = stability([_dictionary()], resamples=R)
    assert cosine.estimate.value is None and matched.estimate.value is None
    with pytest.raises(ValueError):
        stability([_dictionary(), _dictionary(s=32)], resamples=R)

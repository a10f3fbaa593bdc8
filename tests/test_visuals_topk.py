"""The top-k pass equals a brute-force computation exactly, in every sort mode."""

import numpy as np
import pytest
import torch

import saev.data
import saev.nn
from saev.visuals import topk
from saev.visuals.topk import HIST_EDGES, top_activations
from tests.test_data_store import write_store

N_IMGS, N_PATCH, D, S, K = 37, 9, 8, 40, 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((N_IMGS, 1, N_PATCH + 1, D)).astype(np.float32)
    acts[5] = acts[3]  # a duplicate image: equal scores must go to the lower index
    store = saev.data.open_shards(
        write_store(tmp_path_factory.mktemp("s") / "s", acts, per_shard=10, shards_json=True)
    )
    sae = saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=D, d_sae=S, activation=saev.nn.TopK(k=6), seed=3))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5)
    return store, sae, acts


def brute_force(sae, acts, sort_by):
    with torch.no_grad():
        codes = sae.encode(torch.from_numpy(acts[:, 0]))  # [N, T, S]
    patches = codes[:, 1:]
    scores = {"patch": patches.amax(1), "img": patches.sum(1), "cls": codes[:, 0]}[sort_by]  # [N, S]
    values = torch.zeros(S, K)
    image_i = torch.full((S, K), -1, dtype=torch.int64)
    maps = torch.zeros(S, K, N_PATCH)
    for s in range(S):
        ranked = sorted(
            (i for i in range(N_IMGS) if scores[i, s] > 0), key=lambda i: (-scores[i, s].item(), i)
        )[:K]
        for slot, i in enumerate(ranked):
            values[s, slot], image_i[s, slot], maps[s, slot] = scores[i, s], i, patches[i, :, s]
    counted = codes[:, :1] if sort_by == "cls" else patches
    return values, image_i, maps, counted.reshape(-1, S)


@pytest.mark.parametrize("sort_by", ["patch", "img", "cls"])
@pytest.mark.parametrize("batch_mib", [256, 0.001])
def test_topk_equals_brute_force_exactly(setup, sort_by, batch_mib):
    store, sae, acts = setup
    top = top_activations(sae, store, -2, top_k=K, sort_by=sort_by, batch_mib=batch_mib, progress=False)
    values, image_i, maps, counted = brute_force(sae, acts, sort_by)
    assert torch.equal(top.image_i_SK, image_i)
    assert torch.equal(top.values_SK, values)
    assert torch.equal(top.patch_maps_SKP, maps)
    for row in top.image_i_SK.tolist():  # image 5 duplicates image 3: it ties and must come after it
        if 5 in row:
            assert 3 in row and row.index(3) < row.index(5)
    fires = (counted > 0).double()
    torch.testing.assert_close(top.stats.freq_S, fires.mean(0))
    torch.testing.assert_close(
        top.stats.mean_S,
        torch.where(
            fires.sum(0) > 0, (counted * (counted > 0)).sum(0) / fires.sum(0).clamp_min(1), 0
        ).float(),
    )
    torch.testing.assert_close(top.stats.max_S, counted.amax(0))
    assert top.stats.hist_SB.sum(1).tolist() == fires.sum(0).long().tolist()
    s = int(torch.argmax(fires.sum(0)))
    expected_hist = np.histogram(
        np.clip(counted[:, s][counted[:, s] > 0].numpy(), 1e-4, 1e4 * 0.999), bins=HIST_EDGES.numpy()
    )[0]
    np.testing.assert_array_equal(top.stats.hist_SB[s].numpy(), expected_hist)


@pytest.mark.parametrize("sort_by", ["patch", "img", "cls"])
@pytest.mark.parametrize("batch_mib", [256, 0.001])
def test_quantile_sample_and_cooccurrence_equal_brute_force(setup, sort_by, batch_mib):
    """The strip's sample is the SAMPLE firing images of highest priority, sorted by score; the image
    histogram counts every firing image; the co-occurrence sample holds every token's firing latents."""
    store, sae, acts = setup
    top = top_activations(sae, store, -2, top_k=K, sort_by=sort_by, batch_mib=batch_mib, progress=False)
    with torch.no_grad():
        codes = sae.encode(torch.from_numpy(acts[:, 0]))
    patches = codes[:, 1:]
    scores = {"patch": patches.amax(1), "img": patches.sum(1), "cls": codes[:, 0]}[sort_by]
    m = topk.SAMPLE
    for s in range(S):
        firing = [i for i in range(N_IMGS) if scores[i, s] > 0]
        keys = topk.priority(torch.tensor(firing, dtype=torch.int64), torch.tensor(s)).tolist()
        drawn = [i for _, i in sorted(zip(keys, firing, strict=True), reverse=True)[:m]]
        drawn.sort(key=lambda i: (scores[i, s].item(), i))
        assert top.sample_image_i_SM[s].tolist() == drawn + [-1] * (m - len(drawn))
        assert top.sample_values_SM[s, : len(drawn)].tolist() == [scores[i, s].item() for i in drawn]
        assert top.sample_values_SM[s, len(drawn) :].eq(0).all()
        for slot, i in enumerate(drawn):
            assert torch.equal(top.sample_maps_SMP[s, slot], patches[i, :, s])
        expected = np.histogram(
            np.clip(scores[firing, s].numpy(), 1e-4, 1e4 * 0.999), bins=HIST_EDGES.numpy()
        )[0]
        np.testing.assert_array_equal(top.stats.img_hist_SB[s].numpy(), expected)
    # Some latent fires on more images than the sample holds, and the sample is not its top images.
    full = [s for s in range(S) if top.sample_image_i_SM[s, -1] >= 0]
    assert full and any(
        set(top.sample_image_i_SM[s].tolist()) != set(top.image_i_SK[s].tolist()) for s in full
    )
    sample = top.cooccur
    assert sample.stride == 1 and sample.n_tokens == N_IMGS * N_PATCH
    fires = patches.reshape(-1, S) > 0
    assert sample.counts_N.tolist() == fires.sum(1).tolist()
    assert sample.latents_A.tolist() == torch.nonzero(fires)[:, 1].tolist()


def test_priority_is_a_fair_draw():
    """Each image is equally likely to be drawn: over many latents, every image's share of the
    draws is close to SAMPLE / n_images, whatever its index."""
    n_imgs, n_latents = 50, 4000
    keys = topk.priority(torch.arange(n_imgs)[:, None], torch.arange(n_latents)[None])
    drawn = torch.sort(keys, dim=0, descending=True).indices[: topk.SAMPLE]
    share = torch.bincount(drawn.flatten(), minlength=n_imgs).double() / n_latents
    assert share.min() > 0.7 * topk.SAMPLE / n_imgs and share.max() < 1.3 * topk.SAMPLE / n_imgs
    assert len(set(keys.flatten().tolist())) == keys.numel()  # no ties

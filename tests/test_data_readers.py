"""iter_batches: ordered and shuffled coverage, seed-determined order, token views, normalisation."""

import json
import math

import numpy as np
import pytest
import torch

import saev.data
from saev.data.statistics import reference_sample, sample_examples
from saev.errors import StoreError
from tests.test_data_store import write_store

N_IMGS, N_LAYERS, N_TOKENS, D = 23, 2, 6, 8


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    acts = (rng.standard_normal((N_IMGS, N_LAYERS, N_TOKENS, D)) * 3 + 1).astype(np.float32)
    return saev.data.open_shards(write_store(tmp_path / "s", acts, per_shard=5, shards_json=True)), acts


def collect(batches):
    batches = list(batches)
    cat = {k: torch.cat([b[k] for b in batches]) for k in ("act", "image_i", "patch_i")}
    return batches, cat


@pytest.mark.parametrize(
    "tokens,expected_tokens", [("patches", range(1, N_TOKENS)), ("cls", [0]), ("all", range(N_TOKENS))]
)
def test_ordered_yields_every_example_once_in_store_order(store, tokens, expected_tokens):
    store, acts = store
    batches, cat = collect(
        saev.data.iter_batches(store, layer=-1, tokens=tokens, batch_size=7, shuffle=False)
    )
    expected = acts[:, 1][:, list(expected_tokens)].reshape(-1, D)
    np.testing.assert_array_equal(cat["act"].numpy(), expected)
    n_tok = len(expected_tokens)
    np.testing.assert_array_equal(cat["image_i"].numpy(), np.repeat(np.arange(N_IMGS), n_tok))
    patch_ids = [t - 1 for t in expected_tokens]  # token 0 is [CLS] -> -1
    np.testing.assert_array_equal(cat["patch_i"].numpy(), np.tile(patch_ids, N_IMGS))
    assert all(len(b["act"]) == 7 for b in batches[:-1]) and 0 < len(batches[-1]["act"]) <= 7
    assert cat["act"].dtype == torch.float32 and cat["image_i"].dtype == torch.int64


@pytest.mark.parametrize("block_mib,buffer_mib", [(4, 256), (0.0002, 0.0006)])
def test_shuffled_yields_every_example_once_in_a_seeded_order(store, block_mib, buffer_mib):
    store, acts = store
    kwargs = dict(
        layer=-2, tokens="all", batch_size=16, shuffle=True, block_mib=block_mib, buffer_mib=buffer_mib
    )
    _, a = collect(saev.data.iter_batches(store, seed=3, **kwargs))
    _, b = collect(saev.data.iter_batches(store, seed=3, **kwargs))
    _, c = collect(saev.data.iter_batches(store, seed=4, **kwargs))
    pairs = list(zip(a["image_i"].tolist(), a["patch_i"].tolist(), strict=True))
    assert len(pairs) == len(set(pairs)) == N_IMGS * N_TOKENS
    assert torch.equal(a["image_i"], b["image_i"]) and torch.equal(a["act"], b["act"])
    assert not torch.equal(a["image_i"], c["image_i"]) or not torch.equal(a["patch_i"], c["patch_i"])
    assert not torch.equal(a["image_i"], torch.sort(a["image_i"]).values)
    expected = acts[a["image_i"].numpy(), 0, a["patch_i"].numpy() + 1]
    np.testing.assert_array_equal(a["act"].numpy(), expected)


def test_image_range_and_drop_last(store):
    store, acts = store
    _, cat = collect(
        saev.data.iter_batches(store, layer=-2, batch_size=4, shuffle=True, images=range(20, 23))
    )
    assert set(cat["image_i"].tolist()) == {20, 21, 22} and len(cat["act"]) == 3 * (N_TOKENS - 1)
    batches, _ = collect(saev.data.iter_batches(store, layer=-2, batch_size=4, shuffle=False, drop_last=True))
    assert all(len(b["act"]) == 4 for b in batches) and len(batches) == (N_IMGS * (N_TOKENS - 1)) // 4
    with pytest.raises(StoreError, match="contiguous range"):
        next(saev.data.iter_batches(store, images=range(0, 30)))


def test_normalize_uses_the_reference_sample_and_is_cached(store):
    store, acts = store
    n_examples = N_IMGS * (N_TOKENS - 1)
    sample = sample_examples(store, -2, "patches")
    chosen = reference_sample(n_examples)
    expected_rows = acts[:, 0, 1:].reshape(-1, D)[chosen]
    np.testing.assert_array_equal(sample.numpy(), expected_rows)
    # The reference's own sampling order: permutation(n) with seed 42, image-major example index.
    assert set(chosen.tolist()) == set(np.random.default_rng(42).permutation(n_examples)[: 2**19].tolist())

    _, cat = collect(saev.data.iter_batches(store, layer=-2, batch_size=50, shuffle=False, normalize=True))
    mean = expected_rows.astype(np.float64).mean(0)
    scale = np.linalg.norm(expected_rows - mean, axis=1).mean() / math.sqrt(D)
    np.testing.assert_allclose(
        cat["act"].numpy(), (acts[:, 0, 1:].reshape(-1, D) - mean) / scale, rtol=1e-5, atol=1e-5
    )
    cache = store.path / "normalization_layer-2_patches.json"
    assert cache.exists()
    cached = json.loads(cache.read_text())
    cache.write_text(json.dumps(cached | {"scale": cached["scale"] * 2}))
    _, again = collect(saev.data.iter_batches(store, layer=-2, batch_size=50, shuffle=False, normalize=True))
    torch.testing.assert_close(again["act"], cat["act"] / 2)  # read from the cache, not recomputed


def test_bfloat16_is_decoded_exactly():
    from saev.data.store import to_float32

    x = torch.randn(1000) * 100
    raw = x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(to_float32(raw, "bfloat16"), x.to(torch.bfloat16).float().numpy())


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("start_batch", [1, 3, 9])
def test_start_batch_resumes_the_same_stream(store, shuffle, start_batch):
    store, _ = store
    kwargs = dict(
        layer=-2,
        tokens="all",
        batch_size=7,
        shuffle=shuffle,
        seed=(5, 1),
        block_mib=0.0002,
        buffer_mib=0.0006,
    )
    full = list(saev.data.iter_batches(store, **kwargs))
    rest = list(saev.data.iter_batches(store, start_batch=start_batch, **kwargs))
    assert len(rest) == len(full) - start_batch
    for a, b in zip(full[start_batch:], rest, strict=True):
        assert torch.equal(a["act"], b["act"]) and torch.equal(a["image_i"], b["image_i"])

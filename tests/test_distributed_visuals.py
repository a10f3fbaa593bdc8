"""`saev visuals` split over processes: per-part top-k and statistics merge into exactly the result of one
process, and under torchrun every output file is byte-identical to a one-process run."""

import json
import pathlib
import shutil

import numpy as np
import pytest
import torch

import saev.data
import saev.nn
from saev.cli import main
from saev.distributed import split
from saev.visuals import topk
from tests.test_data_store import write_store
from tests.test_recording import cli_args
from tests.torchrun import torchrun

N_IMGS, N_PATCH, D, S, K = 37, 9, 8, 40, 5
DUPLICATES = {5: 3, 30: 3, 21: 12}
"""Image -> an earlier image it copies: equal scores, also across parts, must go to the lower index."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    rng = np.random.default_rng(1)
    acts = rng.standard_normal((N_IMGS, 1, N_PATCH + 1, D)).astype(np.float32)
    for copy, original in DUPLICATES.items():
        acts[copy] = acts[original]
    store = saev.data.open_shards(
        write_store(tmp_path_factory.mktemp("s") / "s", acts, per_shard=10, shards_json=True)
    )
    sae = saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=D, d_sae=S, activation=saev.nn.TopK(k=6), seed=3))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5)
    return store, sae


def scan(store, sae, chunks, sort_by="patch"):
    return topk._scan(sae, store, store.layer_index(-2), chunks, K, sort_by, "cpu", False)


def assert_same(a: topk.TopActivations, b: topk.TopActivations) -> None:
    """Bit for bit: equal values, and the same sign of every zero."""
    for name in (
        "values_SK",
        "image_i_SK",
        "patch_maps_SKP",
        "sample_values_SM",
        "sample_image_i_SM",
        "sample_maps_SMP",
    ):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and x.numpy().tobytes() == y.numpy().tobytes(), name
    assert a.cooccur.stride == b.cooccur.stride
    for name in ("counts_N", "latents_A"):
        x, y = getattr(a.cooccur, name), getattr(b.cooccur, name)
        assert x.dtype == y.dtype and x.numpy().tobytes() == y.numpy().tobytes(), name
    assert a.stats.n_tokens == b.stats.n_tokens
    for name in ("freq_S", "mean_S", "max_S", "hist_SB", "img_hist_SB"):
        x, y = getattr(a.stats, name), getattr(b.stats, name)
        assert x.dtype == y.dtype and x.numpy().tobytes() == y.numpy().tobytes(), name


@pytest.mark.parametrize("sort_by", ["patch", "img", "cls"])
@pytest.mark.parametrize("n_chunks", [topk.CHUNKS, 5])
def test_chunked_pass_matches_the_unchunked_pass(setup, sort_by, n_chunks, monkeypatch):
    """Chunking changes only the order of the float64 sums: one chunk is the pass as it was."""
    store, sae = setup
    monkeypatch.setattr(topk, "CHUNKS", n_chunks)
    chunks = topk.plan(store, 3)  # shards of 10 images in runs of 3: 15 batches
    assert [len(c) for c in chunks] == ([1] * 15 if n_chunks > 15 else [3] * 5)
    chunked = topk.top_activations(
        sae, store, -2, K, sort_by, batch_mib=3 * N_PATCH * S * 4 / 2**20, progress=False
    )
    part = scan(store, sae, chunks, sort_by)
    assert len(part.stats.chunk_sums) == len(chunks)
    monkeypatch.setattr(topk, "CHUNKS", 1)
    whole = topk.top_activations(
        sae, store, -2, K, sort_by, batch_mib=3 * N_PATCH * S * 4 / 2**20, progress=False
    )
    one = scan(store, sae, topk.plan(store, 3), sort_by)
    assert len(one.stats.chunk_sums) == 1
    for name in ("values_SK", "image_i_SK", "patch_maps_SKP"):
        assert torch.equal(getattr(chunked, name), getattr(whole, name))
    for name in ("freq_S", "max_S", "hist_SB"):
        assert torch.equal(getattr(chunked.stats, name), getattr(whole.stats, name))
    assert chunked.stats.n_tokens == whole.stats.n_tokens
    torch.testing.assert_close(chunked.stats.mean_S, whole.stats.mean_S, rtol=1e-6, atol=0)
    torch.testing.assert_close(part.stats.sums, one.stats.sums, rtol=1e-12, atol=0)
    assert torch.equal(part.stats.fires, one.stats.fires)


@pytest.mark.parametrize("sort_by", ["patch", "img", "cls"])
@pytest.mark.parametrize("imgs_per_batch", [1, 4])
@pytest.mark.parametrize("n_parts", [2, 3, 5, 40])
def test_parts_merge_into_the_one_process_result_bitwise(setup, sort_by, imgs_per_batch, n_parts):
    """Each part streams a contiguous share of the chunks, as a rank does; merging them in rank order is
    the one-process pass, bit for bit, including its float64 sums and the ties between duplicates."""
    store, sae = setup
    chunks = topk.plan(store, imgs_per_batch)
    one = topk._combine([scan(store, sae, chunks, sort_by)], store, -2, sort_by)
    parts = [scan(store, sae, [chunks[c] for c in share], sort_by) for share in split(len(chunks), n_parts)]
    assert one.cooccur.n_tokens == N_IMGS * N_PATCH
    # Through pickling, as `all_gather_object` carries them.
    parts = [torch.serialization.pickle.loads(torch.serialization.pickle.dumps(p.to("cpu"))) for p in parts]
    merged = topk._combine(parts, store, -2, sort_by)
    assert_same(merged, one)
    top = one.image_i_SK.tolist()
    assert any(3 in row and 30 in row for row in top)  # a tie between parts...
    for row in top:  # ...goes to the lower index
        for copy, original in DUPLICATES.items():
            if copy in row:
                assert original in row and row.index(original) < row.index(copy)


@pytest.mark.parametrize("seed", range(6))
def test_tracker_merge_equals_one_tracker_over_everything(seed):
    """The merge oracle on its own: random contiguous parts of a stream of scores from a handful of
    values (ties everywhere, and zeros that never enter), each into its own tracker."""
    rng = np.random.default_rng(seed)
    n_sae, k, n_patch, n_imgs = 7, 4, 3, 60
    scores = torch.from_numpy(rng.integers(0, 4, size=(n_imgs, n_sae)).astype(np.float32)) / 2
    patches = torch.from_numpy(rng.standard_normal((n_imgs, n_patch, n_sae)).astype(np.float32))
    cuts = sorted(rng.choice(np.arange(1, n_imgs), size=rng.integers(1, 8), replace=False).tolist())
    bounds = [0, *cuts, n_imgs]
    one = topk._Tracker(n_sae, k, n_patch, "cpu")
    parts = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        tracker = topk._Tracker(n_sae, k, n_patch, "cpu")
        for start in range(a, b, 3):  # batches of 3 within the part
            stop = min(b, start + 3)
            batch = (scores[start:stop], patches[start:stop], torch.arange(start, stop))
            tracker.add(*batch)
            one.add(*batch)
        parts.append(tracker)
    merged = topk.merge(parts)
    for name in ("values_SK", "image_i_SK", "maps_SKP", "n_filled_S"):
        assert getattr(merged, name).numpy().tobytes() == getattr(one, name).numpy().tobytes(), name
    # And the brute force: K highest scores above zero, ties to the lower index.
    for s in range(n_sae):
        ranked = sorted((i for i in range(n_imgs) if scores[i, s] > 0), key=lambda i: (-scores[i, s], i))[:k]
        assert merged.image_i_SK[s].tolist() == ranked + [-1] * (k - len(ranked))


@pytest.mark.parametrize("seed", range(4))
def test_sampler_merge_equals_one_sampler_over_everything(seed):
    """The quantile sample's merge on its own: random contiguous parts, in any order, merge into the
    sample of one sampler over the whole stream, bit for bit, maps included."""
    rng = np.random.default_rng(seed)
    n_sae, m, n_patch, n_imgs = 6, 4, 3, 50
    scores = torch.from_numpy(rng.integers(0, 3, size=(n_imgs, n_sae)).astype(np.float32))
    patches = torch.from_numpy(rng.standard_normal((n_imgs, n_patch, n_sae)).astype(np.float32))
    cuts = sorted(rng.choice(np.arange(1, n_imgs), size=rng.integers(1, 8), replace=False).tolist())
    bounds = [0, *cuts, n_imgs]
    one = topk._Sampler(n_sae, m, n_patch, "cpu")
    parts = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        sampler = topk._Sampler(n_sae, m, n_patch, "cpu")
        for start in range(a, b, 4):
            stop = min(b, start + 4)
            batch = (scores[start:stop], patches[start:stop], torch.arange(start, stop))
            sampler.add(*batch)
            one.add(*batch)
        parts.append(sampler)
    rng.shuffle(parts)  # the priorities, not the order, decide
    merged = topk.merge_samplers(parts)
    for x, y in zip(merged.ascending(), one.ascending(), strict=True):
        assert x.numpy().tobytes() == y.numpy().tobytes()
    values, image_i, _ = merged.ascending()
    for s in range(n_sae):
        firing = [i for i in range(n_imgs) if scores[i, s] > 0]
        keys = topk.priority(torch.tensor(firing), torch.tensor(s)).tolist()
        drawn = sorted(i for _, i in sorted(zip(keys, firing, strict=True), reverse=True)[:m])
        assert sorted(i for i in image_i[s].tolist() if i >= 0) == drawn
        assert values[s].tolist() == sorted(values[s].tolist()[: len(drawn)]) + [0.0] * (m - len(drawn))


def test_a_rank_share_without_chunks_merges_as_nothing(setup, monkeypatch):
    """More ranks than chunks: the ranks without any contribute empty parts. The co-occurrence
    sample keeps every 7th image (store order), whichever rank reads it."""
    monkeypatch.setattr(topk, "COOCCUR_TOKENS", 50)
    store, sae = setup
    chunks = topk.plan(store, 40)  # one run per shard: 4 chunks
    assert len(chunks) == 4
    one = topk._combine([scan(store, sae, chunks)], store, -2, "patch")
    parts = [scan(store, sae, [chunks[c] for c in share]) for share in split(len(chunks), 6)]
    assert sum(not p.stats.chunk_sums for p in parts) == 2
    assert one.cooccur.stride == 7 and one.cooccur.n_tokens == len(range(0, N_IMGS, 7)) * N_PATCH
    assert_same(topk._combine(parts, store, -2, "patch"), one)


# Under torchrun


def tree(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, tiny_clip, photos_dir):
    """12 real images recorded by a tiny CLIP into shards of 2 images (6 batches, so 3 chunks a rank),
    with image 10 a copy of image 1's activations: a tie between the ranks' shares."""
    tmp = tmp_path_factory.mktemp("dist-visuals")
    images = tmp / "images"
    shutil.copytree(photos_dir, images / "a")
    for name in sorted(p.name for p in photos_dir.iterdir())[:4]:
        shutil.copy(photos_dir / name, images / f"z{name}")
    main(cli_args(tiny_clip, images, tmp / "shards", n_patches_per_shard=2 * 2 * 197))
    store_dir = next((tmp / "shards").iterdir())
    store = saev.data.open_shards(store_dir)
    assert len(store) == 12 and len(store.shards) == 6
    raw = np.memmap(store_dir / "acts000005.bin", dtype=np.float32, mode="r+")
    raw[: raw.size // 2] = np.fromfile(store_dir / "acts000000.bin", dtype=np.float32)[raw.size // 2 :]
    raw.flush()
    sae = saev.nn.SparseAutoencoder(
        saev.nn.SaeConfig(d_vit=64, d_sae=32, activation=saev.nn.TopK(k=6), seed=2)
    )
    sae.provenance = saev.nn.Provenance(layer=-2)
    saev.nn.dump(tmp / "sae.safetensors", sae)
    return tmp, store_dir


def visuals_args(tmp: pathlib.Path, store_dir: pathlib.Path, out: pathlib.Path) -> list[str]:
    return [
        "visuals",
        "--sae",
        str(tmp / "sae.safetensors"),
        "--shards",
        str(store_dir),
        "--top-k",
        "6",
        "--n-latents",
        "8",
        "--out",
        str(out),
    ]


@pytest.mark.slow
def test_torchrun_writes_the_same_bytes_as_one_process(recorded, capsys):
    tmp, store_dir = recorded
    out = tmp / "out"  # the same folder for both runs: the index quotes it in a command
    main(visuals_args(tmp, store_dir, out))
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    single = tmp / "single"
    out.rename(single)
    result = torchrun(visuals_args(tmp, store_dir, out), nproc=2)
    assert result.stdout.strip() == str(out / "index.html")  # reported once, by rank 0
    expected, got = tree(single), tree(out)
    assert sorted(got) == sorted(expected)
    assert {"latents.json", "topk.safetensors", "index.html"} <= set(got)
    assert sum(name.startswith("thumbs/") for name in got) > 16
    assert [name for name in expected if got[name] != expected[name]] == []
    latents = json.loads(expected["latents.json"])["latents"]
    tops = [[img["image_i"] for img in lat["top"]] for lat in latents]
    assert any(min(row) < 6 <= max(row) for row in tops if row)  # the top images mix both ranks' shares
    assert any(1 in row and 10 in row and row.index(1) < row.index(10) for row in tops)


@pytest.mark.slow
def test_torchrun_stops_every_rank_on_a_nan_in_one_share(recorded, tmp_path, capsys):
    tmp, store_dir = recorded
    bad = tmp_path / store_dir.name
    shutil.copytree(store_dir, bad)
    raw = np.memmap(bad / "acts000004.bin", dtype=np.float32, mode="r+", shape=(2, 2, 197, 64))
    raw[1, saev.data.open_shards(bad).layer_index(-2), 5, 7] = np.nan  # image 9 (rank 1's share), patch 4
    raw.flush()
    with pytest.raises(SystemExit):
        main(visuals_args(tmp, bad, tmp_path / "single"))
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "image 9" in message and "the top-k pass" in message
    result = torchrun(visuals_args(tmp, bad, tmp_path / "out"), nproc=2, check=False)
    assert result.returncode != 0
    for rank in (0, 1):
        line = message.replace("saev: error: ", f"saev: error: rank {rank} of 2: ")
        assert line in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "out" / "latents.json").exists()

"""A store is checked against its own files when opened, and non-finite activations are refused,
never averaged into statistics, cached, or written into a gallery."""

import json
import logging
import math
import os
import pathlib
import shutil
import time

import numpy as np
import pytest
import torch

import saev.data
import saev.nn
from saev.cli import main
from saev.data.metadata import PatchLayout, dict_hash
from saev.data.readers import find_nonfinite
from saev.data.statistics import cache_path, store_normalization
from saev.data.writer import write_arrays
from saev.errors import CheckpointError, StoreError
from saev.nn import checkpoints
from saev.visuals.topk import top_activations
from tests.test_data_store import write_store

# 7 images, 2 layers, [CLS] + 4 patches, d_vit 8; 3 images a shard: shards of 3, 3 and 1 images.
N, L, T, D, PER = 7, 2, 5, 8, 3
SHARD_BYTES = PER * L * T * D * 4


def acts() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((N, L, T, D)).astype(np.float32) + 1


def saev_store(root: pathlib.Path, **kw) -> pathlib.Path:
    """A store as saev writes it (hash-named folder, shards.json), whose images.json names files."""
    store = write_arrays(
        root,
        acts(),
        vit_family="synthetic",
        vit_ckpt="tiny",
        layers=kw.pop("layers", (-2, -1)),
        cls_token=True,
        data={"__class__": "Arrays"},
        max_patches_per_shard=PER * L * T,
        **kw,
    )
    images = [{"path": f"photos/img{i}.png", "label": None} for i in range(N)]
    (store / "images.json").write_text(json.dumps({"source": {}, "images": images}))
    return store


def edit_metadata(store: pathlib.Path, **changes) -> None:
    path = store / "metadata.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes, indent=4))


def poke(
    store: pathlib.Path,
    shard: str,
    pos: int,
    layer_i: int,
    token: int,
    value: float,
    dtype: type = np.float32,
):
    """Write one value into a shard in place, as a buggy recording or a bad disk would."""
    mm = np.memmap(store / shard, dtype=dtype, mode="r+", shape=(PER, L, T, D))
    mm[pos, layer_i, token, 3] = value
    mm.flush()
    del mm


# Metadata that disagrees with the files


@pytest.mark.parametrize(
    "change,words",
    [
        ({"d_vit": 16}, ["has 960 bytes; metadata.json implies 1,920", "d_vit 16"]),
        ({"dtype": "float16"}, ["implies 480", "x 2 bytes (dtype float16)"]),
        ({"n_patches_per_img": 5}, ["implies 768", "n_patches_per_img 5 + [CLS]", "2 images per shard"]),
        ({"cls_token": False}, ["implies 768", "x 4 tokens (n_patches_per_img 4)"]),
    ],
)
def test_metadata_that_does_not_describe_the_shards_is_refused(tmp_path, change, words):
    store = saev_store(tmp_path)
    edit_metadata(store, **change)
    with pytest.raises(StoreError) as err:
        saev.data.open_shards(store)
    message = str(err.value)
    assert str(store / "acts000000.bin") in message
    for word in words:
        assert word in message


def test_a_shard_with_extra_bytes_is_refused_and_a_short_one_too(tmp_path):
    store = saev_store(tmp_path)
    with open(store / "acts000001.bin", "ab") as f:
        f.write(b"\0" * 4)
    with pytest.raises(StoreError, match=r"acts000001.bin has 964 bytes; metadata.json implies 960"):
        saev.data.open_shards(store)
    os.truncate(store / "acts000001.bin", SHARD_BYTES - 4)
    with pytest.raises(StoreError, match=r"acts000001.bin has 956 bytes.*the file is truncated"):
        saev.data.open_shards(store)


@pytest.mark.parametrize(
    "change,implied",
    [
        ({"n_patches_per_img": 2}, "5 images per shard"),  # [CLS] + 2 patches: 30 // 2 // 3 = 5
        ({"layers": [-1]}, "6 images per shard"),  # 30 // 1 // 5 = 6
    ],
)
def test_changes_that_keep_the_shard_size_are_caught_by_the_image_counts(tmp_path, change, implied):
    # The shard budget fixes a full shard's bytes (960 here), but not how many images it holds.
    store = saev_store(tmp_path)
    edit_metadata(store, **change)
    with pytest.raises(
        StoreError, match=rf"shards.json: acts000000.bin holds 3 images, but metadata.json implies {implied}"
    ):
        saev.data.open_shards(store)


def test_layers_must_be_unique_and_in_block_order(tmp_path):
    store = saev_store(tmp_path / "a")
    edit_metadata(store, layers=[-2, -2])
    with pytest.raises(StoreError, match=r"metadata.json: layers \[-2, -2\] name a layer twice"):
        saev.data.open_shards(store)
    edit_metadata(store, layers=[-1, -2])
    with pytest.raises(
        StoreError, match=r"metadata.json: layers \[-1, -2\] are not listed in ascending block order"
    ):
        saev.data.open_shards(store)
    # Both signs: layout.json's depth orders them. Block 1 runs before block -1 (3) of 4.
    mixed = saev_store(tmp_path / "b", layers=(1, -1), layout=PatchLayout((2, 2), 0, 4))
    assert saev.data.open_shards(mixed).layer_index(-1) == 1
    edit_metadata(mixed, layers=[-1, 1])
    with pytest.raises(
        StoreError, match=r"layers \[-1, 1\] are not listed in ascending block order \(blocks \[3, 1\]"
    ):
        saev.data.open_shards(mixed)
    edit_metadata(mixed, layers=[3, -1])  # the same block twice
    with pytest.raises(StoreError, match=r"blocks \[3, 3\]"):
        saev.data.open_shards(mixed)


def test_layout_json_is_checked_when_the_store_opens(tmp_path):
    store = saev_store(tmp_path, layout=PatchLayout((2, 2), 0, 4))
    (store / "layout.json").write_text(json.dumps({"grid": [3, 3], "n_blocks": 4}))
    with pytest.raises(
        StoreError, match="grid 3x3 has 9 patches, but metadata.json says n_patches_per_img=4"
    ):
        saev.data.open_shards(store)


def test_image_count_without_shards_json_is_checked_against_the_files(tmp_path, caplog):
    root = write_store(tmp_path / "s", acts(), per_shard=PER)  # the reference's layout: no shards.json
    assert len(saev.data.open_shards(root)) == N
    edit_metadata(root, n_imgs=6)  # two shards' worth, but a third shard exists
    with pytest.raises(
        StoreError, match=r"acts000002.bin exists, but metadata.json \(n_imgs 6, 3 images per shard\)"
    ):
        saev.data.open_shards(root)
    edit_metadata(root, n_imgs=5)  # two shards, the second really holding 3 images, not 2
    (root / "acts000002.bin").rename(tmp_path / "third.bin")
    with pytest.raises(StoreError, match=r"acts000001.bin holds an image after image 4.*n_imgs=5.*too small"):
        saev.data.open_shards(root)
    edit_metadata(root, n_imgs=7)
    with pytest.raises(StoreError, match=r"acts000002.bin is missing \(metadata.json says 7 images"):
        saev.data.open_shards(root)
    (tmp_path / "third.bin").rename(root / "acts000002.bin")
    edit_metadata(root, n_imgs=8)  # image 7 is the zero padding after the last image
    with caplog.at_level(logging.WARNING, logger="saev.data"):
        assert len(saev.data.open_shards(root)) == 8
    assert "image 7, the last that metadata.json's n_imgs=8 counts, is all zeros" in caplog.text


def test_an_edited_metadata_json_is_reported_by_its_hash(tmp_path, caplog):
    store = saev_store(tmp_path)
    with caplog.at_level(logging.WARNING, logger="saev.data"):
        saev.data.open_shards(store)
        assert caplog.text == ""  # saev's own hash
        reference = write_store(tmp_path / "ref", acts(), per_shard=PER)
        meta = json.loads((reference / "metadata.json").read_text())
        named = reference.rename(tmp_path / dict_hash(meta, compact=False))  # the reference's hash
        saev.data.open_shards(named)
        assert caplog.text == ""
        edit_metadata(store, layers=[-3, -1])  # same sizes, another layer
        assert saev.data.open_shards(store).layers == (-3, -1)
    assert f"{store / 'metadata.json'} was changed after recording" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="saev.data"):
        saev.data.open_shards(store.rename(tmp_path / "my-store"))  # renamed by its user: nothing to compare
    assert caplog.text == ""


# Shard names that leave the store


@pytest.mark.parametrize("name", ["../outside.bin", "ABSOLUTE", "sub/acts000000.bin", "", ".."])
def test_shard_names_must_be_plain_file_names(tmp_path, name):
    store = saev_store(tmp_path / "store")
    outside = tmp_path / "outside.bin"
    shutil.copy(store / "acts000000.bin", outside)  # a readable file of the right size
    name = str(outside) if name == "ABSOLUTE" else name
    listing = json.loads((store / "shards.json").read_text())
    listing[0]["name"] = name
    (store / "shards.json").write_text(json.dumps(listing))
    with pytest.raises(StoreError, match=rf"shards.json: shard name {name!r} is not a plain file name"):
        saev.data.open_shards(store)


def test_shards_that_link_out_of_the_store_or_repeat_are_refused(tmp_path):
    store = saev_store(tmp_path / "store")
    outside = tmp_path / "elsewhere.bin"
    shutil.move(store / "acts000001.bin", outside)
    (store / "acts000001.bin").symlink_to(outside)
    with pytest.raises(
        StoreError, match=r"shard acts000001.bin is a link to .*elsewhere.bin, outside the store"
    ):
        saev.data.open_shards(store)
    shutil.move(outside, store / "acts000001.bin")
    listing = json.loads((store / "shards.json").read_text())
    (store / "shards.json").write_text(json.dumps([listing[0], listing[0] | {"n_imgs": 3}, listing[2]]))
    with pytest.raises(StoreError, match="lists a shard twice"):
        saev.data.open_shards(store)
    (store / "shards.json").write_text(json.dumps([{"name": "acts000000.bin"}]))
    with pytest.raises(StoreError, match=r"shards.json: expected a list of"):
        saev.data.open_shards(store)


# Non-finite activations


def test_one_nan_is_refused_by_the_statistics_with_its_image_and_token(tmp_path):
    store_dir = saev_store(tmp_path)
    poke(store_dir, "acts000001.bin", 1, 0, 2, np.nan)  # image 4, layer -2, token 2 = patch 1
    store = saev.data.open_shards(store_dir)
    for compute in (
        lambda: store_normalization(store, -2, "patches"),
        lambda: next(saev.data.iter_batches(store, layer=-2, normalize=True)),
    ):
        with pytest.raises(StoreError) as err:
            compute()
        message = str(err.value)
        assert f"{store_dir / 'acts000001.bin'}: activation nan at image 4 (photos/img4.png)" in message
        assert "token 2 (patch 1) of layer -2" in message
    assert not cache_path(store, -2, "patches").exists()  # nothing is cached
    assert find_nonfinite(store, -2) == [(4, 2)]
    assert find_nonfinite(store, -1) == [] and find_nonfinite(store, -2, "cls") == []
    assert store_normalization(store, -1, "patches").scale > 0  # the other layer is clean


def test_infinity_in_a_float16_store_names_the_overflow(tmp_path):
    store_dir = saev_store(tmp_path, dtype="float16")
    poke(store_dir, "acts000002.bin", 0, 1, 0, np.inf, dtype=np.float16)
    store = saev.data.open_shards(store_dir)
    with pytest.raises(
        StoreError, match=r"activation inf at image 6.*token 0 \(\[CLS\]\) of layer -1.*float16 overflows"
    ):
        store_normalization(store, -1, "all")


def test_stale_or_non_finite_statistics_are_recomputed(tmp_path):
    store_dir = saev_store(tmp_path)
    store = saev.data.open_shards(store_dir)
    clean = store_normalization(store, -2, "patches")
    path = cache_path(store, -2, "patches")
    # An older saev cached NaN statistics, with no fingerprint: they are not trusted.
    path.write_text(json.dumps({"mean": [math.nan] * D, "scale": math.nan, "clamp": 1e5}))
    again = store_normalization(saev.data.open_shards(store_dir), -2, "patches")
    assert torch.equal(again.mean, clean.mean) and again.scale == clean.scale
    assert math.isfinite(json.loads(path.read_text())["scale"])

    # NaN written, then repaired with other values: the statistics follow the store, not the cache.
    time.sleep(0.02)  # so the shard's modification time moves even on a coarse file-system clock
    poke(store_dir, "acts000000.bin", 0, 0, 1, np.nan)
    with pytest.raises(StoreError, match="activation nan at image 0"):
        store_normalization(saev.data.open_shards(store_dir), -2, "patches")
    assert json.loads(path.read_text())["scale"] == clean.scale  # the failed pass wrote nothing
    poke(store_dir, "acts000000.bin", 0, 0, 1, 1000.0)
    repaired = store_normalization(saev.data.open_shards(store_dir), -2, "patches")
    data = saev.data.open_shards(store_dir)
    rows = np.stack([data.acts(i)[0, 1:] for i in range(N)]).reshape(-1, D).astype(np.float64)
    np.testing.assert_allclose(repaired.mean.numpy(), rows.mean(0), rtol=1e-6)
    assert not np.allclose(repaired.mean.numpy(), clean.mean.numpy())


def test_estimate_normalization_refuses_nan():
    x = torch.ones(4, 3)
    x[2, 1] = math.nan
    with pytest.raises(ValueError, match=r"activation row 2 \(of 4\) holds NaN"):
        saev.nn.estimate_normalization(x)


def small_sae() -> saev.nn.SparseAutoencoder:
    return saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=D, d_sae=16, activation=saev.nn.TopK(k=4)))


def test_top_k_refuses_nan_activations_and_nan_codes(tmp_path):
    store_dir = saev_store(tmp_path)
    poke(store_dir, "acts000001.bin", 2, 1, 3, np.nan)  # image 5, layer -1, patch 2
    store = saev.data.open_shards(store_dir)
    with pytest.raises(
        StoreError, match=r"image 5 \(photos/img5.png\), token 3 \(patch 2\) of layer -1; the top-k pass"
    ):
        top_activations(small_sae(), store, -1, top_k=2, progress=False)
    assert top_activations(small_sae(), store, -2, top_k=2, progress=False).values_SK.isfinite().all()
    broken = small_sae()
    with torch.no_grad():
        broken.W_enc[0, 0] = math.nan
    with pytest.raises(CheckpointError, match="the SAE's codes are not finite"):
        top_activations(broken, store, -2, top_k=2, progress=False)


# Through the command line


def fails(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "saev: error: " in err
    return err


TRAIN = ["--layer", "-2", "--exp-factor", "2", "--k", "2", "--n-train", "100", "--batch-size", "10"]


def test_cli_train_refuses_a_store_whose_metadata_lies(tmp_path, capsys):
    store = saev_store(tmp_path / "shards")
    edit_metadata(store, d_vit=16)
    err = fails(capsys, "train", "--shards", str(store), "--out", str(tmp_path / "runs"), *TRAIN)
    assert "acts000000.bin has 960 bytes; metadata.json implies 1,920" in err and "d_vit 16" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_cli_train_refuses_nan_in_a_held_out_image(tmp_path, capsys):
    store = saev_store(tmp_path / "shards")
    poke(store, "acts000002.bin", 0, 0, 4, np.nan)  # image 6: the held-out tail
    err = fails(capsys, "train", "--shards", str(store), "--out", str(tmp_path / "runs"), *TRAIN)
    assert "activation nan at image 6 (photos/img6.png), token 4 (patch 3) of layer -2" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not list(store.glob("normalization_*.json"))


@pytest.mark.slow
def test_cli_visuals_refuses_nan_and_writes_no_gallery(tmp_path, capsys):
    store = saev_store(tmp_path / "shards")
    poke(store, "acts000000.bin", 2, 0, 1, np.nan)
    checkpoints.dump(tmp_path / "sae.safetensors", small_sae())
    out = tmp_path / "gallery"
    err = fails(
        capsys,
        "visuals",
        "--sae",
        str(tmp_path / "sae.safetensors"),
        "--shards",
        str(store),
        "--out",
        str(out),
    )
    assert "activation nan at image 2 (photos/img2.png), token 1 (patch 0) of layer -2; the top-k pass" in err
    assert not (out / "latents.json").exists()


def test_a_store_without_spread_cannot_be_normalised(tmp_path):
    """All-equal activations have scale 0: refused by name rather than divided by zero into NaN."""
    store = write_arrays(
        tmp_path,
        np.ones((N, L, T, D), dtype=np.float32),
        vit_family="synthetic",
        vit_ckpt="tiny",
        layers=(-2, -1),
        cls_token=True,
        data={"__class__": "Arrays"},
        max_patches_per_shard=PER * L * T,
    )
    opened = saev.data.open_shards(store)
    with pytest.raises(StoreError, match=r"activations of layer -2 \(patches\) are all equal"):
        store_normalization(opened, -2, "patches")
    assert not cache_path(opened, -2, "patches").exists()

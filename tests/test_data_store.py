"""The activation store: layouts of every era, round trips per dtype, and the reference's own stores."""

import hashlib
import json
import pathlib
import shutil

import numpy as np
import pytest
import torch

import saev.data
from saev.activations import RecordedVisionTransformer, make_img_transform, make_vit
from saev.activations.recording import RecordConfig, record
from saev.data.images import load_rgb
from saev.errors import StoreError
from tests.conftest import TINY_CLIP_HF
from tests.reference import load_reference

PROTOCOL_KEYS = {
    "vit_family",
    "vit_ckpt",
    "layers",
    "n_patches_per_img",
    "cls_token",
    "d_vit",
    "n_imgs",
    "max_patches_per_shard",
    "data",
    "dtype",
    "protocol",
}


def write_store(
    root: pathlib.Path, acts: np.ndarray, *, per_shard: int, cls_token=True, era="vit", shards_json=False
) -> pathlib.Path:
    """Write a store by hand, straight from the reference's description of the layout."""
    n, n_layers, n_tokens, d = acts.shape
    budget = per_shard * n_layers * n_tokens
    names = {
        "vit": ("vit_family", "vit_ckpt"),
        "model_family": ("model_family", "model_ckpt"),
        "model_org": ("model_org", "model_ckpt"),
    }[era]
    meta = {
        names[0]: "clip",
        names[1]: "ViT-B-16/openai",
        "layers": [-2, -1][:n_layers],
        "n_patches_per_img": n_tokens - int(cls_token),
        "cls_token": cls_token,
        "d_vit": d,
        "seed": 42,
        "n_imgs": n,
        "n_patches_per_shard": budget,
        "data": "ImageFolderDataset(root='x')",
    }
    root.mkdir(parents=True)
    (root / "metadata.json").write_text(json.dumps(meta, indent=4))
    shards = []
    for k, start in enumerate(range(0, n, per_shard)):
        shard = np.zeros((per_shard, n_layers, n_tokens, d), dtype=np.float32)
        part = acts[start : start + per_shard]
        shard[: len(part)] = part
        shard.tofile(root / f"acts{k:06d}.bin")
        shards.append({"name": f"acts{k:06d}.bin", "n_imgs": len(part)})
    if shards_json:
        (root / "shards.json").write_text(json.dumps(shards))
    return root


@pytest.mark.parametrize("era", ["vit", "model_family", "model_org"])
@pytest.mark.parametrize("shards_json", [False, True])
def test_reads_every_metadata_era(tmp_path, era, shards_json):
    acts = np.random.default_rng(0).standard_normal((7, 2, 5, 3)).astype(np.float32)
    store = saev.data.open_shards(
        write_store(tmp_path / "s", acts, per_shard=3, era=era, shards_json=shards_json)
    )
    assert len(store) == 7 and store.layers == (-2, -1) and store.metadata["n_imgs"] == 7
    assert [s.n_imgs for s in store.shards] == [3, 3, 1]
    for i in range(7):
        np.testing.assert_array_equal(store.acts(i), acts[i])


def test_store_errors_name_the_problem(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        saev.data.open_shards(tmp_path / "nope")
    acts = np.zeros((5, 1, 3, 2), dtype=np.float32)
    root = write_store(tmp_path / "s", acts, per_shard=2)
    (root / "acts000002.bin").unlink()
    with pytest.raises(StoreError, match="acts000002.bin is missing"):
        saev.data.open_shards(root)
    root = write_store(tmp_path / "t", acts, per_shard=2, shards_json=True)
    with open(root / "acts000001.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(StoreError, match="truncated"):
        saev.data.open_shards(root)
    with pytest.raises(StoreError, match="layer 5 is not in this store"):
        next(saev.data.iter_batches(write_store(tmp_path / "u", acts, per_shard=2), layer=5))


def record_photos(tiny_clip, images, dump_to, **kw) -> saev.data.ShardStore:
    cfg = RecordConfig(
        vit_family="clip", vit_ckpt=tiny_clip, images=str(images), dump_to=dump_to, n_workers=0, **kw
    )
    return saev.data.open_shards(record(cfg).path)


def direct_acts(ckpt, paths, layers, cls_token=True) -> torch.Tensor:
    vit = make_vit("clip", ckpt)
    transform = make_img_transform("clip", ckpt)
    rec = RecordedVisionTransformer(vit, 196, cls_token, layers)
    with torch.inference_mode():
        return torch.cat([rec(transform(load_rgb(p))[None])[1] for p in paths])


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_for_every_dtype(tmp_path, tiny_clip, photos_dir, dtype):
    store = record_photos(
        tiny_clip,
        photos_dir,
        tmp_path,
        layers=(-1, 1),
        dtype=dtype,
        batch_size=3,
        n_patches_per_shard=3 * 2 * 197,
    )
    assert store.meta.dtype == dtype and store.layers == (1, -1)  # stored in block order
    paths = [photos_dir / img["path"] for img in store.images]
    expected = direct_acts(tiny_clip, paths, [1, -1]).to(getattr(torch, dtype)).float().numpy()
    assert len(store) == len(paths) == 8
    for i in range(len(store)):
        np.testing.assert_array_equal(store.acts(i), expected[i])
    size = (store.path / "acts000000.bin").stat().st_size
    assert size == 3 * 2 * 197 * 64 * (4 if dtype == "float32" else 2)
    assert set(store.metadata) == PROTOCOL_KEYS


def protocol_reader(root: pathlib.Path, image_i: int, layer: int) -> np.ndarray:
    """A reader written from the protocol 1.0.0 text alone: what a reference reader would do."""
    meta = json.loads((root / "metadata.json").read_text())
    assert set(meta) == PROTOCOL_KEYS and meta["protocol"] == "1.0.0"
    assert (
        root.name
        == hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    )
    n_tokens = meta["n_patches_per_img"] + int(meta["cls_token"])
    per_shard = meta["max_patches_per_shard"] // (n_tokens * len(meta["layers"]))
    shards = json.loads((root / "shards.json").read_text())
    assert sum(s["n_imgs"] for s in shards) == meta["n_imgs"]
    shard = np.memmap(
        root / shards[image_i // per_shard]["name"],
        dtype=np.float32,
        mode="r",
        shape=(per_shard, len(meta["layers"]), n_tokens, meta["d_vit"]),
    )
    return np.array(shard[image_i % per_shard, meta["layers"].index(layer)])


@pytest.mark.oracle
def test_store_equals_reference_store_and_each_reads_the_other(tmp_path, tiny_clip_dir, photos_dir):
    load_reference()
    import saev_ref.activations
    import saev_ref.config

    images = tmp_path / "classes"
    for k, path in enumerate(sorted(photos_dir.iterdir())):
        (images / f"class{k % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, images / f"class{k % 3}" / path.name)
    ckpt = f"hf-hub:{TINY_CLIP_HF}"
    budget = 100 * 197
    ref_cfg = saev_ref.config.Activations(
        data=saev_ref.config.ImageFolderDataset(root=str(images)),
        dump_to=str(tmp_path / "ref"),
        vit_family="clip",
        vit_ckpt=ckpt,
        vit_batch_size=4,
        n_workers=0,
        d_vit=64,
        vit_layers=[-2],
        n_patches_per_img=196,
        cls_token=True,
        n_patches_per_shard=budget,
        device="cpu",
    )
    saev_ref.activations.worker_fn(ref_cfg)
    ref_store = saev.data.open_shards(next((tmp_path / "ref").iterdir()))

    ours = record_photos(
        ckpt, images, tmp_path / "ours", layers=(-2,), batch_size=4, n_patches_per_shard=budget
    )
    assert len(ours) == len(ref_store) == 8
    for i in range(len(ours)):
        np.testing.assert_array_equal(ours.acts(i), ref_store.acts(i))  # value for value
        np.testing.assert_array_equal(protocol_reader(ours.path, i, -2), ref_store.acts(i)[0])
    assert [img["label"] for img in ours.images] == [f"class{k}" for k in (0, 0, 0, 1, 1, 1, 2, 2)]


def test_the_patch_grid_comes_from_layout_json_or_a_square(tmp_path, tiny_clip, photos_dir):
    store = record_photos(tiny_clip, photos_dir, tmp_path / "rec", layers=(-2,))
    assert json.loads((store.path / "layout.json").read_text()) == {
        "grid": [14, 14],
        "n_registers": 0,
        "patch_order": "row-major",
        "n_blocks": 4,
    }
    assert store.grid == (14, 14) and set(store.metadata) == PROTOCOL_KEYS  # metadata.json untouched
    # The store knows the model's depth, so block -2 of 4 can also be called 2.
    assert store.layer_label(2) == -2 and store.layer_index(2) == store.layer_index(-2) == 0
    with pytest.raises(StoreError, match=r"layer 1 is not in this store; it holds layers \[-2\]"):
        store.layer_index(1)

    acts = np.zeros((3, 1, 1 + 6, 4), dtype=np.float32)
    old = saev.data.open_shards(write_store(tmp_path / "old", acts[:, :, :5], per_shard=2))
    assert old.grid == (2, 2)  # no layout.json (older stores, the reference's): a square grid
    wide = write_store(tmp_path / "wide", acts, per_shard=2)
    with pytest.raises(StoreError, match="6 patches do not form a square grid.*no layout.json"):
        _ = saev.data.open_shards(wide).grid
    (wide / "layout.json").write_text(json.dumps({"grid": [2, 3], "n_registers": 4}))
    store = saev.data.open_shards(wide)
    assert store.grid == (2, 3) and store.layout.n_registers == 4
    (wide / "layout.json").write_text(json.dumps({"grid": [3, 3]}))
    with pytest.raises(
        StoreError, match="grid 3x3 has 9 patches, but metadata.json says n_patches_per_img=6"
    ):
        _ = saev.data.open_shards(wide).grid

"""`saev activations`: resumable after a kill, byte-identical; bad images skipped without shifting indices."""

import json
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import saev.data
import saev.nn
from saev.activations.recording import RecordConfig, record
from saev.cli import main
from saev.data.store import STATE_FILE
from saev.data.writer import ShardWriter
from saev.errors import ConfigError, StoreError
from tests.conftest import import_or_skip
from tests.test_data_store import direct_acts

FILES = ("metadata.json", "shards.json", "images.json", "skipped.json")


def store_files(root: pathlib.Path) -> dict[str, bytes]:
    names = sorted(p.name for p in root.iterdir() if p.name.startswith("acts") or p.name in FILES)
    return {name: (root / name).read_bytes() for name in names}


def many_images(tmp_path, photos, n) -> pathlib.Path:
    root = tmp_path / "many"
    for k in range(n):
        src = photos[k % len(photos)]
        (root / f"c{k % 4}").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / f"c{k % 4}" / f"{k:03d}{src.suffix}")
    return root


def cli_args(ckpt, images, dump_to, **extra):
    args = [
        "activations",
        "--vit-family",
        "clip",
        "--vit-ckpt",
        ckpt,
        "--images",
        str(images),
        "--dump-to",
        str(dump_to),
        "--layers",
        "-2",
        "1",
        "--n-workers",
        "0",
    ]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.mark.slow
def test_sigkilled_recording_resumes_to_an_identical_store(tmp_path, tiny_clip, photos):
    images = many_images(tmp_path, photos, 40)
    extra = dict(batch_size=1, n_patches_per_shard=2 * 2 * 197, dtype="float16")
    main(cli_args(tiny_clip, images, tmp_path / "whole", **extra))
    whole = next((tmp_path / "whole").iterdir())

    proc = subprocess.Popen(
        [sys.executable, "-m", "saev", *cli_args(tiny_clip, images, tmp_path / "killed", **extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    killed = tmp_path / "killed" / whole.name
    deadline = time.time() + 120
    while time.time() < deadline:
        listed = json.loads((killed / "shards.json").read_text()) if (killed / "shards.json").exists() else []
        if len(listed) >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metadata.json").exists(), "recording finished before it could be killed"
    assert (killed / STATE_FILE).exists()
    with pytest.raises(StoreError, match="did not finish"):
        saev.data.open_shards(killed)

    result = subprocess.run(
        [sys.executable, "-m", "saev", *cli_args(tiny_clip, images, tmp_path / "killed", **extra)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == str(killed)
    assert "resuming after" in result.stderr
    assert store_files(killed) == store_files(whole)
    assert not (killed / STATE_FILE).exists()


@pytest.mark.parametrize("crash_at", ["append", "rename", "state"])
def test_crash_at_any_step_of_a_shard_resumes_identically(tmp_path, tiny_clip, photos, monkeypatch, crash_at):
    images = many_images(tmp_path, photos, 10)
    cfg = RecordConfig(
        vit_family="clip",
        vit_ckpt=tiny_clip,
        images=str(images),
        dump_to=tmp_path / "a",
        layers=(-2,),
        batch_size=2,
        n_patches_per_shard=3 * 197,
        n_workers=0,
    )
    whole = record(cfg).path

    broken = RecordConfig(**{**cfg.__dict__, "dump_to": tmp_path / "b"})
    real_commit, calls = ShardWriter._commit, []

    def commit(self, shard_i, info):
        calls.append(shard_i)
        if len(calls) == 2:
            if crash_at == "rename":  # shard renamed, not yet listed in the state
                os.replace(self._partial(shard_i), self.root / f"acts{shard_i:06d}.bin")
            elif crash_at == "state":  # listed in the state file, shards.json not yet updated
                real_commit(self, shard_i, info)
                (self.root / "shards.json").write_text("[]")
            raise KeyboardInterrupt("simulated kill")
        return real_commit(self, shard_i, info)

    monkeypatch.setattr(ShardWriter, "_commit", commit)
    with pytest.raises(StoreError):
        record(broken)
    monkeypatch.setattr(ShardWriter, "_commit", real_commit)
    resumed = record(broken).path
    assert store_files(resumed) == store_files(whole)


def test_rerunning_a_finished_store_does_nothing(tmp_path, tiny_clip, photos_dir, capsys):
    args = cli_args(tiny_clip, photos_dir, tmp_path)
    main(args)
    root = pathlib.Path(capsys.readouterr().out.strip().splitlines()[-1])
    before = {p.name: p.stat().st_mtime_ns for p in root.iterdir()}
    main(args)
    out = capsys.readouterr()
    assert "already complete, nothing to do" in out.err
    assert out.out.strip().splitlines()[-1] == str(root)
    assert {p.name: p.stat().st_mtime_ns for p in root.iterdir()} == before


def test_refuses_when_the_disk_is_too_small(tmp_path, tiny_clip, photos_dir, monkeypatch):
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000)
    )
    with pytest.raises(
        StoreError, match=r"8 more images needs about 806\.9 KB \(100\.9 KB each\), but only 1\.0 KB is free"
    ):
        record(
            RecordConfig(
                vit_family="clip",
                vit_ckpt=tiny_clip,
                images=str(photos_dir),
                dump_to=tmp_path,
                layers=(-2, 1),
                n_workers=0,
            )
        )
    assert not list(tmp_path.glob("*/acts*"))


def png_with_size(path, width, height):
    """A valid PNG header claiming a huge image (a decompression bomb) with tiny data."""
    Image.new("L", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then chunk length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    path.write_bytes(bytes(data))


def test_bad_images_are_converted_or_skipped_without_shifting_indices(tmp_path, tiny_clip, photos_dir):
    root = tmp_path / "bad"
    root.mkdir()
    astronaut = Image.open(photos_dir / "astronaut.png")
    astronaut.save(root / "a_good.jpg")
    (root / "b_truncated.jpg").write_bytes((root / "a_good.jpg").read_bytes()[:3000])
    (root / "c_not_an_image.jpg").write_text("just text")
    astronaut.convert("L").save(root / "d_gray.png")
    astronaut.convert("CMYK").save(root / "e_cmyk.jpg")
    rgba = astronaut.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "f_rgba.png")
    astronaut.convert("P").save(root / "g_palette.png")
    Image.fromarray(np.asarray(astronaut.convert("L"), dtype=np.uint16) * 257).save(root / "h_16bit.png")
    Image.new("RGB", (1, 1), "red").save(root / "i_tiny.png")
    png_with_size(root / "j_bomb.png", 30_000, 30_000)
    png_with_size(root / "k_half_bomb.png", 10_000, 9_000)  # between Pillow's warning and error limits
    (root / "notes.txt").write_text("not an image extension: ignored")

    store = saev.data.open_shards(
        record(
            RecordConfig(
                vit_family="clip",
                vit_ckpt=tiny_clip,
                images=str(root),
                dump_to=tmp_path / "out",
                layers=(-2,),
                n_workers=2,
                batch_size=3,
            )
        ).path
    )
    recorded = [img["path"] for img in store.images]
    assert recorded == [
        "a_good.jpg",
        "d_gray.png",
        "e_cmyk.jpg",
        "f_rgba.png",
        "g_palette.png",
        "h_16bit.png",
    ]
    skipped = {s["source"]: s["reason"] for s in json.loads((store.path / "skipped.json").read_text())}
    assert set(skipped) == {
        "b_truncated.jpg",
        "c_not_an_image.jpg",
        "i_tiny.png",
        "j_bomb.png",
        "k_half_bomb.png",
    }
    assert "truncated" in skipped["b_truncated.jpg"] and "not an image" in skipped["c_not_an_image.jpg"]
    assert (
        "too small" in skipped["i_tiny.png"]
        and "bomb" in skipped["j_bomb.png"]
        and "bomb" in skipped["k_half_bomb.png"]
    )
    assert len(store) == 6
    expected = direct_acts(tiny_clip, [root / p for p in recorded], [-2])
    for i in range(len(store)):
        np.testing.assert_allclose(store.acts(i), expected[i].numpy(), rtol=1e-5, atol=1e-5)
    # Conversions are faithful: the 16-bit and grayscale versions of one photo give the same activations.
    np.testing.assert_allclose(store.acts(5), store.acts(1), atol=1e-4)


def test_bad_configurations_fail_before_any_work(tmp_path, tiny_clip, photos_dir):
    base = dict(vit_family="clip", vit_ckpt=tiny_clip, images=str(photos_dir), dump_to=tmp_path, n_workers=0)
    with pytest.raises(ConfigError, match="same block twice"):
        record(RecordConfig(**base, layers=(3, -1)))
    with pytest.raises(ConfigError, match="out of range"):
        record(RecordConfig(**base, layers=(9,)))
    with pytest.raises(ConfigError, match="image folder not found"):
        record(RecordConfig(**{**base, "images": str(tmp_path / "none")}))
    with pytest.raises(ConfigError, match="hf:NAME:SPLIT"):
        record(RecordConfig(**{**base, "images": "hf:imagenet"}))
    assert not list(tmp_path.iterdir())


def test_records_only_the_blocks_it_needs(tmp_path, tiny_clip, photos_dir, monkeypatch):
    import dataclasses

    from saev.activations import families

    calls = []
    real = families.FAMILIES["clip"]

    def counting(*args):
        vit = real.build(*args)
        vit.blocks[-1].register_forward_hook(lambda *a: calls.append(1))
        return vit

    monkeypatch.setitem(families.FAMILIES, "clip", dataclasses.replace(real, build=counting))
    record(
        RecordConfig(
            vit_family="clip",
            vit_ckpt=tiny_clip,
            images=str(photos_dir),
            dump_to=tmp_path,
            layers=(1,),
            n_workers=0,
        )
    )
    assert calls == []
    assert torch.get_num_threads() >= 1


def test_normalize_attaches_store_statistics_to_a_legacy_sae(tmp_path, tiny_clip, photos_dir, capsys):
    from saev.data.statistics import store_normalization
    from tests.reference import HEADERS, write_reference
    from tests.test_nn_checkpoints import random_state

    main(cli_args(tiny_clip, photos_dir, tmp_path / "shards"))
    shards = capsys.readouterr().out.strip().splitlines()[-1]
    write_reference(
        tmp_path / "legacy.pt",
        HEADERS["V0b"] | {"d_vit": 64, "exp_factor": 2},
        random_state(d_vit=64, d_sae=128),
    )

    def normalize(out: str) -> None:
        main(
            [
                "normalize",
                "--sae",
                str(tmp_path / "legacy.pt"),
                "--shards",
                shards,
                "--layer",
                "1",
                "--out",
                str(tmp_path / out),
            ]
        )

    normalize("sae.safetensors")
    sae = saev.nn.load(tmp_path / "sae.safetensors")
    expected = store_normalization(saev.data.open_shards(shards), 1, "patches")
    torch.testing.assert_close(sae.act_mean, expected.mean)
    assert float(sae.act_scale) == pytest.approx(expected.scale)
    assert (sae.provenance.vit_ckpt, sae.provenance.layer, sae.provenance.tokens) == (tiny_clip, 1, "patches")
    with pytest.raises(SystemExit):
        normalize("x.pt")


def test_hugging_face_dataset_source(tmp_path, tiny_clip, photos_dir):
    import_or_skip("datasets")
    data = tmp_path / "hf" / "train"
    for k, path in enumerate(sorted(photos_dir.iterdir())[:4]):
        (data / ("cats" if k % 2 else "dogs")).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, data / ("cats" if k % 2 else "dogs") / path.name)
    store = saev.data.open_shards(
        record(
            RecordConfig(
                vit_family="clip",
                vit_ckpt=tiny_clip,
                images=f"hf:{tmp_path / 'hf'}:train",
                dump_to=tmp_path / "out",
                layers=(-2,),
                n_workers=0,
            )
        ).path
    )
    import datasets

    ds = datasets.load_dataset(str(tmp_path / "hf"), split="train")
    assert store.metadata["data"] == {
        "__class__": "HfDataset",
        "name": str(tmp_path / "hf"),
        "split": "train",
    }
    assert [img["index"] for img in store.images] == [0, 1, 2, 3]
    assert [img["label"] for img in store.images] == [
        ds.features["label"].names[ds[i]["label"]] for i in range(4)
    ]
    from saev.activations import RecordedVisionTransformer, make_img_transform, make_vit
    from saev.data.images import to_rgb

    rec = RecordedVisionTransformer(make_vit("clip", tiny_clip), 196, True, [-2])
    transform = make_img_transform("clip", tiny_clip)
    with torch.inference_mode():
        expected = rec(torch.stack([transform(to_rgb(ds[i]["image"])) for i in range(4)]))[1]
    for i in range(4):
        np.testing.assert_allclose(store.acts(i), expected[i].numpy(), rtol=1e-5, atol=1e-5)
    from saev.visuals.lookup import ImageLookup

    lookup = ImageLookup(store)
    assert lookup.load(2).size == to_rgb(ds[2]["image"]).size and lookup.path(2) == "index 2"


def test_missing_datasets_package_is_a_clear_error(tmp_path, tiny_clip, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[hf\]'"):
        record(
            RecordConfig(
                vit_family="clip",
                vit_ckpt=tiny_clip,
                images="hf:ILSVRC/imagenet-1k:train",
                dump_to=tmp_path,
                n_workers=0,
            )
        )

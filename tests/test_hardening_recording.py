"""`saev activations` on hostile input: symlink cycles, special files, a held store, leftovers of
killed runs, non-finite activations and options that cannot mean anything."""

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import saev.data
from saev.activations import recording
from saev.activations.recorder import RecordedVisionTransformer
from saev.activations.recording import RecordConfig, record
from saev.cli import main
from saev.data.images import load_rgb
from saev.data.sources import scan_folder
from saev.data.store import STATE_FILE
from saev.data.writer import LOCK_FILE, ShardWriter, StoreLock
from saev.errors import ConfigError, ImageError, StoreError
from tests.test_recording import cli_args, store_files

FINISHED = {"metadata.json", "shards.json", "images.json", "skipped.json", "layout.json", "recording.json"}


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """`fn()`, failing the test instead of hanging when it blocks (e.g. opening a FIFO)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def image(path: pathlib.Path, color: tuple[int, int, int] = (200, 30, 90)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path)


def warnings_of(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")


@pytest.fixture
def images(tmp_path, photos) -> pathlib.Path:
    """Six photos in two class folders."""
    root = tmp_path / "images"
    for k, src in enumerate(photos[:6]):
        (root / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / f"c{k % 2}" / f"{k}{src.suffix}")
    return root


def config(tiny_clip: str, images: pathlib.Path, dump_to: pathlib.Path, **extra: Any) -> RecordConfig:
    base = dict(layers=(-2,), batch_size=2, n_patches_per_shard=2 * 197, n_workers=0)
    return RecordConfig(
        vit_family="clip",
        vit_ckpt=tiny_clip,
        images=str(images),
        dump_to=dump_to,
        **(base | extra),
    )


def interrupted(cfg: RecordConfig, monkeypatch) -> pathlib.Path:
    """Start a recording and stop it before its first image, leaving an unfinished store."""

    def stop(*args: Any) -> None:
        raise KeyboardInterrupt("simulated kill")

    with monkeypatch.context() as m:
        m.setattr(recording, "_run", stop)
        with pytest.raises(KeyboardInterrupt):
            record(cfg)
    [root] = cfg.dump_to.iterdir()
    assert (root / STATE_FILE).exists() and not (root / "metadata.json").exists()
    return root


# Folder scans


def test_a_symlink_to_an_ancestor_lists_each_image_once(tmp_path, caplog):
    root = tmp_path / "images"
    image(root / "c0" / "a.png")
    image(root / "c0" / "deep" / "b.png")
    (root / "c0" / "deep" / "up").symlink_to(root)
    (root / "c0" / "here").symlink_to(root / "c0")
    source = within(10, lambda: scan_folder(root))
    assert source.files == ("c0/a.png", "c0/deep/b.png")
    logged = warnings_of(caplog)
    assert f"{root}/c0/deep/up: a symlink to {root}, inside the image folder" in logged
    assert f"{root}/c0/here: a symlink to {root}/c0" in logged


def test_two_symlinks_in_a_cycle_finish_with_each_image_once(tmp_path, caplog):
    root, outside = tmp_path / "images", tmp_path / "elsewhere"
    image(root / "c0" / "a.png")
    image(outside / "x" / "b.png")
    image(outside / "y" / "c.png")
    (outside / "x" / "to_y").symlink_to(outside / "y")
    (outside / "y" / "to_x").symlink_to(outside / "x")
    # Users symlink datasets in: a link leading out of the folder is followed, once per real folder.
    (root / "c0" / "data").symlink_to(outside)
    (root / "c1").symlink_to(outside / "y")
    (root / "c0" / "again").symlink_to(outside / "x")
    source = within(10, lambda: scan_folder(root))
    # The first path met (top level first, then depth first in name order) names each real folder.
    assert source.files == ("c0/a.png", "c0/again/b.png", "c1/c.png")
    assert [source.record(i)["label"] for i in range(3)] == ["c0", "c0", "c1"]
    logged = warnings_of(caplog)
    for path, first in [
        ("c0/again/to_y", "c1"),
        ("c0/data/x", "c0/again"),
        ("c0/data/y", "c1"),
        ("c1/to_x", "c0/again"),
    ]:
        assert f"{root}/{path}: the same folder as {root}/{first}, already scanned" in logged


def test_self_links_dangling_links_and_special_files_are_skipped_by_name(tmp_path, caplog):
    root = tmp_path / "images"
    image(root / "top.png")
    image(root / "c0" / "a.png")
    (root / "self.jpg").symlink_to(root / "self.jpg")
    (root / "c0" / "self.png").symlink_to(root / "c0" / "self.png")
    (root / "c0" / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "c0" / "good_link.png").symlink_to(root / "c0" / "a.png")
    os.mkfifo(root / "c0" / "fifo.jpg")
    os.mkfifo(root / "fifo.png")
    (root / "c0" / "notes.txt").write_text("not an image")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "c0" / "sock.png"))
        source = within(10, lambda: scan_folder(root))
    assert source.files == ("top.png", "c0/a.png", "c0/good_link.png")
    assert source.n_ignored == 1
    logged = warnings_of(caplog)
    assert f"{root}/self.jpg: a symlink that leads back to itself" in logged
    assert f"{root}/c0/self.png: a symlink that leads back to itself" in logged
    assert f"{root}/c0/dangling.jpg: a broken symlink (to {tmp_path / 'nowhere.jpg'})" in logged
    assert f"{root}/c0/fifo.jpg: a FIFO, not an image file" in logged
    assert f"{root}/fifo.png: a FIFO, not an image file" in logged
    assert f"{root}/c0/sock.png: a socket, not an image file" in logged


def test_special_files_given_directly_are_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match=r"pipe\.png: a FIFO, not an image file"):
        within(10, lambda: load_rgb(fifo))
    with pytest.raises(ImageError, match=r"loop\.png: cannot open \(Too many levels of symbolic links\)"):
        (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
        load_rgb(tmp_path / "loop.png")
    with pytest.raises(ConfigError, match=r"pipe\.png: a FIFO, not an image folder"):
        within(10, lambda: scan_folder(fifo))
    image(tmp_path / "photo.png")
    with pytest.raises(ConfigError, match=r"photo\.png: a file, not an image folder"):
        scan_folder(tmp_path / "photo.png")
    only_special = tmp_path / "only"
    only_special.mkdir()
    os.mkfifo(only_special / "x.jpg")
    with pytest.raises(ConfigError, match="no image files found"):
        within(10, lambda: scan_folder(only_special))


# Store lock


def test_a_held_store_refuses_a_second_recording_naming_the_holder(tmp_path, tiny_clip, images, monkeypatch):
    cfg = config(tiny_clip, images, tmp_path / "shards")
    root = interrupted(cfg, monkeypatch)
    before = store_files(root) | {STATE_FILE: (root / STATE_FILE).read_bytes()}

    held = StoreLock(root)
    try:
        with pytest.raises(StoreError) as err:
            record(cfg)
        assert str(err.value) == (
            f"another saev activations (pid {os.getpid()} on host {socket.gethostname()}) "
            f"is recording into {root}; wait for it or stop it."
        )
        assert json.loads((root / LOCK_FILE).read_text()) == {
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        assert store_files(root) | {STATE_FILE: (root / STATE_FILE).read_bytes()} == before
    finally:
        held.release()
    assert not (root / LOCK_FILE).exists()


HOLD = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, json.dumps({"pid": os.getpid(), "host": "elsewhere"}).encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_the_cli_names_the_holder_and_a_killed_holder_blocks_nothing(
    tmp_path, tiny_clip, images, monkeypatch, capsys
):
    budget = 2 * 2 * 197
    root = interrupted(
        config(tiny_clip, images, tmp_path / "shards", layers=(-2, 1), n_patches_per_shard=budget),
        monkeypatch,
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root / LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = cli_args(tiny_clip, images, tmp_path / "shards", batch_size=2, n_patches_per_shard=budget)
        with pytest.raises(SystemExit) as err:
            main(args)
        assert err.value.code == 2
        assert (
            capsys.readouterr()
            .err.strip()
            .endswith(
                f"saev: error: another saev activations (pid {holder.pid} on host elsewhere) "
                f"is recording into {root}; wait for it or stop it."
            )
        )
        assert (root / STATE_FILE).exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (root / LOCK_FILE).exists()  # what a killed run leaves: an unlocked file

    main(args)
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(root)
    shards = {f"acts00000{k}.bin" for k in range(3)}
    assert sorted(p.name for p in root.iterdir()) == sorted(FINISHED | shards)
    assert len(saev.data.open_shards(root)) == 6


# Leftovers of killed runs


def test_leftovers_of_killed_runs_never_reach_the_finished_store(tmp_path, tiny_clip, images, monkeypatch):
    cfg = config(tiny_clip, images, tmp_path / "whole")
    whole = record(cfg).path

    broken = dataclasses.replace(cfg, dump_to=tmp_path / "killed")
    real_commit, calls = ShardWriter._commit, []

    def commit(self, shard_i, info):
        calls.append(shard_i)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_commit(self, shard_i, info)

    with monkeypatch.context() as m:
        m.setattr(ShardWriter, "_commit", commit)
        with pytest.raises(StoreError):
            record(broken)
    root = broken.dump_to / whole.name
    # What a SIGKILL leaves mid-way through atomic writes and a shard, plus its unlocked lock file.
    leftovers = [
        ".shards.json.0123456789ab.tmp",
        "..saev-recording.json.abcdefabcdef.tmp",
        ".images.json.00aa11bb22cc.tmp",
        ".metadata.json.ffffffffffff.tmp",
        "acts000001.bin.partial",
    ]
    for name in leftovers:
        (root / name).write_bytes(b"junk")
    (root / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "gone"}))
    (root / "notes.tmp").write_text("a user's file")

    resumed = record(broken).path
    assert resumed == root
    assert store_files(root) == store_files(whole)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        FINISHED | {"acts000000.bin", "acts000001.bin", "acts000002.bin", "notes.tmp"}
    )

    # A store finished by a run killed just after metadata.json is tidied by the next run, which
    # leaves alone what other commands may be writing beside the store at that moment.
    (root / ".skipped.json.123456123456.tmp").write_bytes(b"junk")
    (root / LOCK_FILE).write_text("")
    foreign = root / ".normalization_layer-2_patches.json.0123456789ab.tmp"
    foreign.write_bytes(b"in flight")
    assert record(broken).already_complete
    assert not (root / ".skipped.json.123456123456.tmp").exists() and not (root / LOCK_FILE).exists()
    assert foreign.read_bytes() == b"in flight"
    assert store_files(root) == store_files(whole)


def test_a_folder_of_unreadable_images_leaves_nothing_behind(tmp_path, tiny_clip, capsys, caplog):
    root = tmp_path / "broken"
    root.mkdir()
    for name in ("a.png", "b.jpg"):
        (root / name).write_bytes(b"not an image")
    os.mkfifo(root / "c.jpg")
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "earlier.txt").write_text("kept")
    with pytest.raises(SystemExit) as err:
        main(cli_args(tiny_clip, root, shards))
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "no image could be read (2 tried), so no store was written" in message
    assert f"{root}/a.png: not an image Pillow can identify" in message
    assert f"{root}/c.jpg: a FIFO, not an image file" in warnings_of(caplog)
    assert sorted(p.name for p in shards.iterdir()) == ["earlier.txt"]


# Non-finite activations


def poisoning(monkeypatch) -> None:
    """Single-colour images make the model give NaN (mostly red) or huge values (mostly blue)."""
    real = RecordedVisionTransformer.record

    def record_(self, x):
        acts = real(self, x)
        flat = x.flatten(2)
        for b in torch.nonzero(flat.std(dim=2).amax(dim=1) < 1e-6).flatten().tolist():
            acts[b] = torch.nan if flat[b, 0, 0] > flat[b, 2, 0] else acts[b] * 1e6
        return acts

    monkeypatch.setattr(RecordedVisionTransformer, "record", record_)


def test_images_with_non_finite_activations_are_skipped_and_named(
    tmp_path, tiny_clip, images, monkeypatch, caplog
):
    clean = saev.data.open_shards(record(config(tiny_clip, images, tmp_path / "clean", dtype="float16")).path)
    image(images / "c0" / "1_nan.png", (255, 0, 0))
    image(images / "c1" / "5_big.png", (0, 0, 255))
    poisoning(monkeypatch)

    result = record(config(tiny_clip, images, tmp_path / "poisoned", dtype="float16"))
    store = saev.data.open_shards(result.path)
    assert result.non_finite == ("c0/1_nan.png", "c1/5_big.png")
    assert result.n_skipped == 2 and len(store) == 6
    assert [img["path"] for img in store.images] == [img["path"] for img in clean.images]
    skipped = json.loads((store.path / "skipped.json").read_text())
    assert skipped == [
        {
            "index": 1,
            "source": "c0/1_nan.png",
            "reason": "non-finite activations (NaN or inf) from the model at layer(s) [-2]",
        },
        {
            "index": 7,
            "source": "c1/5_big.png",
            "reason": "non-finite activations: values beyond the range of float16; "
            "record with --dtype float32 or bfloat16",
        },
    ]
    for i in range(len(store)):
        assert np.isfinite(store.acts(i)).all()
        np.testing.assert_allclose(store.acts(i), clean.acts(i), rtol=1e-3, atol=1e-3)
    logged = warnings_of(caplog)
    assert "skipped c0/1_nan.png: non-finite activations (NaN or inf)" in logged
    assert (
        "skipped 2 image(s) whose activations are not finite (NaN or inf): c0/1_nan.png, c1/5_big.png"
        in logged
    )

    only = tmp_path / "only"
    image(only / "red.png", (255, 0, 0))
    with pytest.raises(StoreError, match=r"\(1 tried\), so no store was written: non-finite activations"):
        record(config(tiny_clip, only, tmp_path / "none"))
    assert not any((tmp_path / "none").iterdir())


# Options that cannot mean anything


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("n_patches_per_img", 0, "--n-patches-per-img must be positive, got 0"),
        ("n_patches_per_img", -196, "--n-patches-per-img must be positive, got -196"),
        ("batch_size", 0, "--batch-size must be positive, got 0"),
        ("batch_size", -4, "--batch-size must be positive, got -4"),
        ("n_patches_per_shard", 0, "--n-patches-per-shard must be positive, got 0"),
        ("n_workers", -1, "--n-workers must be >= 0, got -1"),
        ("layers", (), "--layers needs at least one block index"),
        ("dtype", "float64", "--dtype must be one of float32, float16, bfloat16, got 'float64'"),
        ("autocast", "fp8", "--autocast must be one of none, bf16, fp16, got 'fp8'"),
    ],
)
def test_impossible_options_fail_before_any_work(tmp_path, images, monkeypatch, option, value, message):
    def no_work(*args: Any) -> None:
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(recording, "open_source", no_work)
    monkeypatch.setattr(recording, "make_vit", no_work)
    cfg = RecordConfig(vit_family="clip", vit_ckpt="unused", images=str(images), dump_to=tmp_path / "out")
    object.__setattr__(cfg, option, value)  # the library API is not type-checked at run time
    with pytest.raises(ConfigError) as err:
        record(cfg)
    assert str(err.value).startswith(message)
    assert not (tmp_path / "out").exists()


def test_a_shard_budget_below_one_image_is_refused_by_name(tmp_path, tiny_clip, images, capsys):
    with pytest.raises(
        ConfigError, match=r"--n-patches-per-shard 393 cannot hold one image \(2 layer\(s\) x 197"
    ):
        record(config(tiny_clip, images, tmp_path / "out", layers=(-2, 1), n_patches_per_shard=393))
    with pytest.raises(SystemExit) as err:
        main(cli_args(tiny_clip, images, tmp_path / "out", n_patches_per_img=0))
    assert err.value.code == 2
    assert "saev: error: --n-patches-per-img must be positive, got 0." in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

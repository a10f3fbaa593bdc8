"""Nothing outside the user's files is replaced or opened: every writer refuses an existing output path
that is a FIFO, a socket or a device (with or without --overwrite), every file the CLI reads is
checked by kind before it is opened, and the output of any command may be piped into `head`.

Devices and FIFOs are created in the test's temporary folder only, never in /dev."""

import contextlib
import errno
import json
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

import saev.nn
from saev.cli import main
from saev.fileio import atomic_open, check_output, existing_kind
from tests.test_hardening_cli import MINIMAL, run_cli


@contextlib.contextmanager
def no_hang(seconds: int = 20) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM interrupts a blocking open() of a FIFO (PEP 475 retries it
    only after the handler ran, and the handler raises)."""

    def expire(*_):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def special(path: pathlib.Path, kind: str) -> pathlib.Path:
    """A FIFO, a listening Unix socket's file or a character device (like /dev/null) at `path`."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()  # the file stays
    else:
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("creating a device file needs root")
    return path


KIND_WORDS = {"fifo": "a FIFO", "socket": "a socket", "device": "a character device"}
KINDS = sorted(KIND_WORDS)


def untouched(path: pathlib.Path, kind: str) -> bool:
    mode = os.lstat(path).st_mode
    return {"fifo": stat.S_ISFIFO, "socket": stat.S_ISSOCK, "device": stat.S_ISCHR}[kind](mode)


@pytest.fixture
def sae_file(tmp_path) -> pathlib.Path:
    sae = saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=16, d_sae=32, seed=1))
    sae.provenance = saev.nn.Provenance("builtin", "shapes-vit", -2, "patches")
    path = tmp_path / "sae.safetensors"
    saev.nn.dump(path, sae)
    return path


# The shared guard


@pytest.mark.parametrize("kind", KINDS)
def test_atomic_writes_never_replace_a_special_file(tmp_path, kind):
    target = special(tmp_path / "x.safetensors", kind)
    with pytest.raises(saev.errors.ConfigError, match=f"x.safetensors is {KIND_WORDS[kind]}, not a file"):
        with atomic_open(target) as f:
            f.write(b"data")
    assert untouched(target, kind)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]  # no temporary left


def test_a_special_file_appearing_while_writing_is_not_replaced(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(saev.errors.ConfigError, match="is a FIFO"):
        with atomic_open(target, "w") as f:
            os.mkfifo(target)
            f.write("{}")
    assert stat.S_ISFIFO(os.lstat(target).st_mode)


def test_kinds_are_named(tmp_path):
    assert existing_kind(tmp_path / "nothing") is None
    assert existing_kind(tmp_path) == "a folder"
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    assert existing_kind(tmp_path / "dangling") == "a broken symbolic link"
    with pytest.raises(saev.errors.ConfigError, match="is a broken symbolic link, not a file"):
        check_output(tmp_path / "dangling")
    check_output(tmp_path, "folder")  # a folder where a folder is expected passes


# Every writer


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("overwrite", [False, True])
def test_convert_never_replaces_a_special_file(tmp_path, sae_file, capsys, kind, overwrite):
    target = special(tmp_path / "out.safetensors", kind)
    err = run_cli(["convert", str(sae_file), str(target), *(["--overwrite"] if overwrite else [])], capsys)
    assert f"out.safetensors is {KIND_WORDS[kind]}, not a file" in err
    assert untouched(target, kind)


def test_convert_never_replaces_a_special_file_in_a_folder_it_overwrites(tmp_path, sae_file, capsys):
    folder = tmp_path / "lens"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    fifo = special(folder / "cfg.json", "fifo")
    err = run_cli(["convert", str(sae_file), str(folder), "--to", "saelens", "--overwrite"], capsys)
    assert "cfg.json is a FIFO, not a file" in err
    assert untouched(fifo, "fifo") and (folder / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "notes.txt"]


@pytest.mark.parametrize("kind", KINDS)
def test_normalize_refuses_a_special_output_before_any_work(tmp_path, capsys, kind):
    target = special(tmp_path / "x.safetensors", kind)
    err = run_cli(
        ["normalize", "--sae", "nowhere.safetensors", "--shards", "nowhere", "--out", str(target)], capsys
    )
    assert f"--out {target} is {KIND_WORDS[kind]}, not a file" in err
    assert untouched(target, kind)


OUTPUT_FOLDERS = [
    ("activations", "--dump-to"),
    ("train", "--out"),
    ("visuals", "--out"),
    ("inspect", "--out"),
    ("steer", "--out"),
    ("evaluate", "--out"),
    ("probe", "--out"),
    ("quickstart", "--out"),
]


@pytest.mark.parametrize("command, flag", OUTPUT_FOLDERS)
@pytest.mark.parametrize("kind", KINDS)
def test_an_output_folder_that_is_a_special_file_is_refused(
    command, flag, kind, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    target = special(tmp_path / "out", kind)
    err = run_cli([command, *MINIMAL[command], flag, "out"], capsys)
    assert f"{flag} out is {KIND_WORDS[kind]}, not a folder" in err
    assert untouched(target, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_export_never_replaces_a_special_file(tmp_path, sae_file, capsys, kind):
    run = tmp_path / "run"
    run.mkdir()
    (run / "sae.safetensors").write_bytes(sae_file.read_bytes())
    (run / "config.json").write_text(json.dumps({"run_id": "r", "config": {}, "sae": {}}))
    out = tmp_path / "out"
    out.mkdir()
    target = special(out / "README.md", kind)
    err = run_cli(["export", str(run), str(out), "--overwrite"], capsys)
    assert f"README.md is {KIND_WORDS[kind]}, not a file" in err
    assert untouched(target, kind) and sorted(p.name for p in out.iterdir()) == ["README.md"]
    err = run_cli(["export", str(run), str(target)], capsys)
    assert f"{target} is {KIND_WORDS[kind]}, not a folder" in err


def test_inspect_does_not_write_into_a_fifo_in_its_folder(tmp_path, tiny_clip, photos, capsys):
    from tests.test_inspect import make_sae

    make_sae(tmp_path / "sae.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    fifo = special(out / f"{photos[0].stem}.png", "fifo")
    args = ["inspect", str(photos[0]), "--sae", str(tmp_path / "sae.safetensors"), "--out", str(out)]
    with no_hang():
        err = run_cli([*args, "--vit-family", "clip", "--vit-ckpt", tiny_clip], capsys)
    assert f"{fifo} is a FIFO, not a file" in err and untouched(fifo, "fifo")


def cli_run_dir(store: pathlib.Path, out: pathlib.Path, **extra) -> pathlib.Path:
    """The run folder of `tests.test_hardening_training.cli(store, out)`."""
    from saev.training import TrainConfig

    flags = dict(layer=0, exp_factor=4, k=3, n_train=3000, batch_size=100)
    return out / TrainConfig(shards=store, out=out, **flags, **extra).run_id


def test_train_does_not_append_to_a_fifo_in_its_run_folder(tmp_path, capsys):
    from tests.test_hardening_training import cli, tiny_store

    store = tiny_store(tmp_path / "store")
    run_dir = cli_run_dir(store, tmp_path / "runs")
    run_dir.mkdir(parents=True)
    fifo = special(run_dir / "metrics.jsonl", "fifo")
    with no_hang():
        err = run_cli(cli(store, tmp_path / "runs"), capsys)
    assert "metrics.jsonl is a FIFO, not a file" in err and untouched(fifo, "fifo")


# Every file the CLI reads


def test_a_fifo_sweep_file_is_refused_without_blocking(tmp_path, capsys):
    fifo = special(tmp_path / "sweep.toml", "fifo")
    with no_hang():
        err = run_cli(["train", "--shards", str(tmp_path), "--sweep", str(fifo)], capsys)
    assert f"{fifo}: is a FIFO, not a sweep file" in err


def test_a_fifo_catalogue_is_refused_without_blocking(tmp_path, capsys, monkeypatch):
    from saev.nn import catalog

    fifo = special(tmp_path / "catalog.json", "fifo")
    monkeypatch.setenv("SAEV_CATALOG", str(fifo))
    catalog._entries.cache_clear()
    try:
        with no_hang():
            err = run_cli(["catalog"], capsys)
    finally:
        catalog._entries.cache_clear()
    assert f"{fifo}: is a FIFO, not a saev catalogue" in err


@pytest.mark.parametrize("name", ["metadata.json", "shards.json", "layout.json", "images.json"])
def test_a_store_file_that_is_a_fifo_is_refused_without_blocking(tmp_path, name):
    from tests.test_hardening_training import tiny_store

    store = tiny_store(tmp_path / "store")
    (store / name).unlink(missing_ok=True)
    special(store / name, "fifo")
    with no_hang(), pytest.raises(saev.errors.SaevError, match=f"{name}: is a FIFO"):
        opened = saev.data.open_shards(store)
        opened.image_source  # noqa: B018 (images.json is read on first use)


# Piped output


@pytest.mark.slow
def test_output_piped_into_a_closed_reader_ends_quietly():
    """`saev catalog --json | head -c 10`: the reader leaves before saev writes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "saev", "catalog", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


# A disk that fills up while training checkpoints


class _FillsUp:
    """A file whose writes succeed for the first `room` bytes, then fail as on a full disk: torch.save
    then reports "[enforce fail at inline_container.cc]" unless saev unwraps the OSError."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def test_a_disk_filling_during_a_checkpoint_is_one_line_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    from saev.training import trainer as trainer_mod
    from tests.test_hardening_training import cli, tiny_store

    store = tiny_store(tmp_path / "store")
    real_open = trainer_mod.atomic_open
    count = {"checkpoint.pt": 0}

    @contextlib.contextmanager
    def second_checkpoint_fills_the_disk(path, mode="wb", **kw):
        with real_open(path, mode, **kw) as f:
            name = pathlib.Path(path).name
            count[name] = count.get(name, 0) + 1
            yield _FillsUp(f, 2048) if (name, count[name]) == ("checkpoint.pt", 2) else f

    args = cli(store, tmp_path / "runs", "--ckpt-every", "10")
    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "atomic_open", second_checkpoint_fills_the_disk)
        err = run_cli(args, capsys)
    run_dir = cli_run_dir(store, tmp_path / "runs", ckpt_every=10)
    assert f"saev: error: {run_dir / 'checkpoint.pt'}: No space left on device." in err
    assert "recordings and trainings resume" in err and "inline_container" not in err
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 10
    main([*args, "--resume"])
    assert (run_dir / "sae.safetensors").exists()


@pytest.mark.slow
def test_a_closed_stdout_is_not_a_traceback():
    """`saev catalog --json >&-`: Python starts with sys.stdout None."""
    proc = subprocess.run(
        [sys.executable, "-m", "saev", "catalog", "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),
        timeout=120,
    )
    assert "Traceback" not in proc.stderr.decode(), proc.stderr.decode()


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_planted_lock_file_is_never_followed_or_written(tmp_path, kind):
    from saev.data.writer import LOCK_FILE, StoreLock

    root = tmp_path / "store"
    root.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    if kind == "symlink":
        (root / LOCK_FILE).symlink_to(victim)
    else:
        special(root / LOCK_FILE, "fifo")
    with no_hang(), pytest.raises(saev.errors.StoreError, match=f"{LOCK_FILE}: is a"):
        StoreLock(root)
    assert victim.read_text() == "keep me" and os.path.lexists(root / LOCK_FILE)

"""Writing a store shard by shard, so a killed recording resumes from its last complete shard.

Each shard is appended to `actsNNNNNN.bin.partial`, padded to full size (sparsely), fsynced and
renamed; only then is it listed in the state file and in `shards.json`. `metadata.json` is
written last: its presence marks a finished store. While a recording runs it holds a lock on
`LOCK_FILE`, so a second recording into the same store fails at once instead of corrupting it.
"""

import dataclasses
import errno
import fcntl
import io
import json
import logging
import os
import pathlib
import queue
import shutil
import socket
import stat
import threading
from typing import Any

import numpy as np
import torch

from saev.data import metadata as md
from saev.data.store import STATE_FILE, to_stored
from saev.errors import StoreError
from saev.fileio import check_output, kind, read_json, temporaries, write_json

logger = logging.getLogger("saev.data")

LOCK_FILE = ".saev-recording.lock"
"""Locked by the recording that writes a store; removed when it finishes or fails."""

PARTS_DIR = ".parts"
"""Where the ranks of a distributed recording keep their parts (see `saev.data.parts`)."""

JSON_FILES = (
    "metadata.json",
    "shards.json",
    "images.json",
    "skipped.json",
    md.LAYOUT_FILE,
    md.RECORDING_FILE,
    STATE_FILE,
)
"""What a recording writes atomically, through temporaries that a killed run leaves behind."""


@dataclasses.dataclass
class Skip:
    index: int
    """Position in the image source."""
    source: str
    reason: str


class ShardWriter:
    """Appends recorded images to shards of `planned` in `dump_to/<planned.hash>/`.

    `planned.n_imgs` is the number of source images; the final metadata counts recorded ones.
    Writes happen on a background thread so they overlap the next forward pass.
    """

    def __init__(
        self,
        dump_to: pathlib.Path,
        planned: md.Metadata,
        fingerprint: str,
        source: dict[str, Any],
        layout: md.PatchLayout | None = None,
        *,
        root: pathlib.Path | None = None,
        first_source: int = 0,
        options: dict[str, Any] | None = None,
    ):
        """`root` overrides `dump_to/<hash>` and `first_source` is where a fresh recording starts (a
        rank's part of a distributed recording, see `saev.data.parts`). `options` are the recording's
        value-changing options that the metadata does not hold (see `md.RECORDING_FILE`): a resume
        or a rerun with others is refused."""
        self.planned = planned
        self.options = options or {}
        self.layout = layout
        self.root = root if root is not None else pathlib.Path(dump_to) / planned.hash
        self.first_source = first_source
        self.source = source
        self.per_shard = planned.n_imgs_per_shard
        check_output(self.root, "folder")
        self.complete = self._finished()
        if self.complete:
            md.check_recording(self.root, md.read_recording(self.root), self.options)
            return
        self._lock = StoreLock(self.root)
        try:
            # Another recording may have finished the store between the check above and the lock.
            self.complete = self._finished()
            if self.complete:
                self._lock.release()
                return
            self.state = self._load_state(fingerprint)
            self._clean_stray_files()
        except BaseException:
            self._lock.release()
            raise
        self.images: list[dict[str, Any]] = list(self.state["images"])
        self.skips: list[Skip] = [Skip(**s) for s in self.state["skipped"]]
        self.filled = 0
        self.last_index = -1
        self._file: io.BufferedWriter | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    # Progress

    @property
    def next_source(self) -> int:
        """First source image not covered by a complete shard."""
        return self.state["next_source"]

    @property
    def room(self) -> int:
        """Images that still fit in the current shard."""
        return self.per_shard - self.filled

    def check_disk(self, n_remaining: int) -> None:
        need = n_remaining * self.planned.bytes_per_img
        free = shutil.disk_usage(self.root).free
        if need > free:
            raise StoreError(
                f"recording {n_remaining} more images needs about {_fmt(need)} ({_fmt(self.planned.bytes_per_img)} each), "
                f"but only {_fmt(free)} is free at {self.root}."
            )

    # Writing

    def write(self, acts: np.ndarray, indices: list[int], records: list[dict[str, Any]]) -> None:
        """Append images (raw store dtype, [n, layers, tokens, d_vit]) that fit in the current shard."""
        if len(acts) > self.room:
            raise ValueError(f"batch of {len(acts)} images does not fit in the {self.room} left in the shard")
        self._raise_pending()
        self.images.extend(records)
        self.filled += len(acts)
        self.last_index = indices[-1]
        self._queue.put(("append", acts))
        if self.filled == self.per_shard:
            self._queue.put(("commit", self._commit_info()))
            self.filled = 0

    def skip(self, index: int, source: str, reason: str) -> None:
        self.skips.append(Skip(index, source, reason))

    def finish(self, allow_empty: bool = False) -> md.Metadata:
        """Write the last shard and the store's JSON files; returns the final metadata. A store with
        no image is an error unless `allow_empty` (a rank's part whose images were all unreadable)."""
        if self.filled:
            self._queue.put(("commit", self._commit_info()))
        self._queue.put(("stop", None))
        self._thread.join()
        try:
            self._raise_pending()
            return self._write_store(allow_empty)
        finally:
            self._lock.release()

    def abort(self) -> None:
        """Stop the writer thread without committing the current shard."""
        self._queue.put(("stop", None))
        self._thread.join()
        self._lock.release()

    # Internals

    def _finished(self) -> bool:
        """Whether the store is complete; if so, drops what a run killed while finishing it left."""
        if not (self.root / "metadata.json").exists():
            return False
        for path in [self.root / STATE_FILE, self.root / LOCK_FILE, *self._temporaries()]:
            path.unlink(missing_ok=True)
        return True

    def _temporaries(self) -> list[pathlib.Path]:
        # Only the recording's own: other commands cache files beside a finished store's.
        return [tmp for name in JSON_FILES for tmp in temporaries(self.root / name)]

    def _write_store(self, allow_empty: bool) -> md.Metadata:
        skipped = sorted(self.skips, key=lambda s: s.index)
        if not self.images and not allow_empty:
            self._remove()
            reasons = "; ".join(s.reason for s in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
            raise StoreError(
                f"no image could be read ({len(skipped)} tried), so no store was written: {reasons}"
            )
        write_json(self.root / "skipped.json", [dataclasses.asdict(s) for s in skipped])
        write_json(self.root / "images.json", {"source": self.source, "images": self.images}, indent=None)
        if self.layout is not None:
            write_json(self.root / md.LAYOUT_FILE, self.layout.to_dict())
        if self.options:
            write_json(self.root / md.RECORDING_FILE, self.options)
        final = dataclasses.replace(self.planned, n_imgs=len(self.images))
        write_json(self.root / "metadata.json", final.to_dict(), indent=4)
        (self.root / STATE_FILE).unlink(missing_ok=True)
        self.complete = True
        return final

    def _commit_info(self) -> dict[str, Any]:
        """Snapshot for the writer thread: what the state file will say once this shard is on disk."""
        return {"images": list(self.images), "next_source": self.last_index + 1, "filled": self.filled}

    def _work(self) -> None:
        committed = len(self.state["shards"])
        try:
            while True:
                op, arg = self._queue.get()
                if op == "stop":
                    return
                if op == "append":
                    if self._file is None:
                        self._file = open(self._partial(committed), "wb")
                    self._file.write(np.ascontiguousarray(arg).data.cast("B"))
                elif op == "commit":
                    self._commit(committed, arg)
                    committed += 1
        except BaseException as err:
            self._error = err
            while True:  # drain so the producer never blocks on a dead writer
                if self._queue.get()[0] == "stop":
                    return

    def _commit(self, shard_i: int, info: dict[str, Any]) -> None:
        name = f"acts{shard_i:06d}.bin"
        f, self._file = self._file, None
        assert f is not None, "a shard is committed only after images were appended to it"
        f.truncate(self.per_shard * self.planned.bytes_per_img)
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(self._partial(shard_i), self.root / name)
        shards = self.state["shards"] + [{"name": name, "n_imgs": info["filled"]}]
        cursor = info["next_source"]
        self.state = self.state | {
            "shards": shards,
            "next_source": cursor,
            "images": info["images"],
            "skipped": [dataclasses.asdict(s) for s in self.skips if s.index < cursor],
        }
        write_json(self.root / STATE_FILE, self.state, indent=None)
        write_json(self.root / "shards.json", shards)

    def _remove(self) -> None:
        """Delete the store folder this writer made, which holds no image (never a user's files)."""
        for path in [self.root / STATE_FILE, self.root / "shards.json", *self.root.glob("acts*.bin*")]:
            path.unlink(missing_ok=True)
        self._lock.release()
        if not any(self.root.iterdir()):
            self.root.rmdir()

    def _partial(self, shard_i: int) -> pathlib.Path:
        return self.root / f"acts{shard_i:06d}.bin.partial"

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise StoreError(f"{self.root}: writing failed: {self._error}") from self._error

    def _load_state(self, fingerprint: str) -> dict[str, Any]:
        path = self.root / STATE_FILE
        fresh = {
            "planned": self.planned.to_dict(),
            "fingerprint": fingerprint,
            "options": self.options,
            "shards": [],
            "next_source": self.first_source,
            "images": [],
            "skipped": [],
        }
        if not path.exists():
            write_json(path, fresh, indent=None)
            return fresh
        state = read_json(path, "recording state", StoreError)
        if not isinstance(state, dict) or state.get("planned") != self.planned.to_dict():
            raise StoreError(f"{self.root}: holds a different recording; remove it or change --dump-to.")
        if state.get("fingerprint") != fingerprint:
            raise StoreError(
                f"{self.root}: the image source changed since this recording started; restore it or remove {self.root}."
            )
        md.check_recording(self.root, state.get("options"), self.options)
        return state

    def _clean_stray_files(self) -> None:
        """Partial shards and shards not yet listed in the state are redone on resume; temporaries
        of JSON files a killed run was writing would otherwise survive into the finished store."""
        listed = {s["name"] for s in self.state["shards"]}
        for path in self.root.glob("acts*.bin*"):
            if path.name not in listed:
                path.unlink()
        for path in self._temporaries():
            path.unlink()
        # A distributed recording of the same store that was stopped: one process starts over.
        if (self.root / PARTS_DIR).is_dir():
            logger.info("removing the parts of an unfinished distributed recording in %s", self.root)
            shutil.rmtree(self.root / PARTS_DIR)
        write_json(self.root / "shards.json", self.state["shards"])


class StoreLock:
    """An exclusive `flock` on a store's LOCK_FILE, which names its holder for the error message.

    The kernel drops the lock when its process dies, so a killed recording never blocks the next
    one; its unlocked file is simply reused.
    """

    def __init__(self, root: pathlib.Path):
        self.path = root / LOCK_FILE
        while True:
            root.mkdir(parents=True, exist_ok=True)
            fd = _open_lock(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise StoreError(
                    f"another saev activations ({holder}) is recording into {root}; wait for it or stop it."
                ) from None
            except OSError as err:
                logger.warning(
                    "cannot lock %s (%s); make sure no other recording writes into %s",
                    self.path,
                    err.strerror,
                    root,
                )
                break
            # A finishing recording removes the file just before unlocking it: lock the new one.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        self.fd: int | None = fd
        _HELD.add(fd)

    def release(self) -> None:
        """Remove the file, then unlock; a recording that opened it meanwhile sees it gone and retries."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        _HELD.discard(self.fd)
        os.close(self.fd)
        self.fd = None


def _open_lock(path: pathlib.Path) -> int:
    """The lock file, created if need be; never through a symbolic link (it would lock, write and
    later remove someone else's file) and never a FIFO or a device."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise StoreError(
            f"{path}: is a symbolic link; saev's recording lock is a plain file it makes itself: remove the link."
        ) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise StoreError(f"{path}: is {kind(mode)}; saev's recording lock is a plain file: remove it.")
    return fd


_HELD: set[int] = set()
"""Descriptors of the locks this process holds."""


def _close_held_locks() -> None:
    # A forked image-decoding worker would share the lock, holding it past its parent's death.
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_locks)


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"pid {int(holder['pid'])} on host {holder['host']}"
    except (ValueError, KeyError, TypeError):  # it has not written its name yet
        return "pid unknown"


def _same_file(fd: int, path: pathlib.Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _fmt(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n_bytes < 1000 or unit == "TB":
            return f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError


def write_arrays(
    dump_to: pathlib.Path,
    acts_NLTD: np.ndarray,
    *,
    vit_family: str,
    vit_ckpt: str,
    layers: tuple[int, ...],
    cls_token: bool,
    data: dict[str, Any],
    dtype: str = "float32",
    max_patches_per_shard: int = 2_400_000,
    layout: md.PatchLayout | None = None,
) -> pathlib.Path:
    """Write in-memory activations [images, layers, tokens, d_vit] as a store; returns its folder."""
    n, n_layers, n_tokens, d_vit = acts_NLTD.shape
    if n_layers != len(layers):
        raise StoreError(f"{n_layers} layers of activations but {len(layers)} layer names.")
    planned = md.Metadata(
        vit_family,
        vit_ckpt,
        tuple(layers),
        n_tokens - int(cls_token),
        cls_token,
        d_vit,
        n,
        max_patches_per_shard,
        data,
        dtype,
    )
    writer = ShardWriter(dump_to, planned, f"arrays:{n}", data, layout)
    if writer.complete:
        return writer.root
    try:
        for start in range(0, n, writer.per_shard):
            chunk = np.ascontiguousarray(acts_NLTD[start : start + writer.per_shard], dtype=np.float32)
            stored = to_stored(torch.from_numpy(chunk), dtype)
            indices = list(range(start, start + len(chunk)))
            writer.write(stored, indices, [{"index": i, "label": None} for i in indices])
    except BaseException:
        writer.abort()
        raise
    writer.finish()
    return writer.root

"""Atomic file writes: write to a temporary name in the same folder, fsync, then rename."""

import contextlib
import glob
import json
import os
import pathlib
import re
import secrets
import struct
import zlib
from collections.abc import Iterator
from typing import IO, Annotated, Any


class OutputFolderMark:
    """Marks a config field that names a folder a command writes into: the CLI refuses an
    existing file there before any work (saev.commands.base.check_options)."""


OutputFolder = Annotated[pathlib.Path, OutputFolderMark()]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success it replaces `path`, on error it is removed."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with naming_errors(path), os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def naming_errors(path: str | os.PathLike) -> Iterator[None]:
    """OSErrors raised inside name `path` when they name no file (a write's ENOSPC names none), so
    that the CLI's one-line error can say which file could not be written."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            err.filename = str(path)
        raise


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Atomically write `obj` as UTF-8 JSON."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


def temporaries(path: str | os.PathLike) -> list[pathlib.Path]:
    """Temporaries that `atomic_open(path)` left beside `path`; only a process killed mid-write leaves one."""
    path = pathlib.Path(path)
    name = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{12}}\.tmp")  # as _create_temporary makes them
    return [p for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp") if name.fullmatch(p.name)]


def _create_temporary(path: pathlib.Path) -> tuple[int, pathlib.Path]:
    """A new file `.NAME.<random>.tmp`; mode 0o666 lets the kernel apply the process umask.

    (tempfile.mkstemp creates 0600 files, and reading the umask means setting it, which races
    with other threads.)
    """
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def canonical_safetensors(payload: bytes, checksum_key: str | None = None) -> bytes:
    """The same safetensors file with its JSON header's keys sorted, and with the CRC-32 of the tensor
    data recorded in its metadata under `checksum_key` if given.

    safetensors writes its header in hash-map order, which changes from process to process; sorting
    makes the same tensors give the same bytes. Data offsets count from the end of the header, so
    only the header is rewritten (space-padded to 8 bytes, as the format allows).
    """
    (n,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8 : 8 + n])
    data = memoryview(payload)[8 + n :]
    if checksum_key is not None:
        header.setdefault("__metadata__", {})[checksum_key] = f"{zlib.crc32(data):08x}"
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + data

"""Files saev reads and writes: atomic writes (a temporary name in the same folder, fsync, rename),
and the one check of what kind of thing a path names before saev opens or replaces it.

saev reads only regular files (opening a FIFO waits for a writer forever, a device never ends) and
writes only over regular files (an atomic rename would replace a device, a FIFO or a socket with a
plain file): `check_input` and `check_output` refuse the rest by kind, with or without
`--overwrite`.
"""

import contextlib
import dataclasses
import glob
import json
import math
import os
import pathlib
import re
import secrets
import stat
import struct
import zlib
from collections.abc import Iterator
from typing import IO, Annotated, Any, Literal, NoReturn

from PIL import Image

from saev.errors import ConfigError, NonFiniteError, SaevError

Want = Literal["file", "folder"]

_KINDS = (
    (stat.S_ISREG, "a file"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


@dataclasses.dataclass(frozen=True)
class OutputMark:
    """Marks a config field that names a folder (or file) a command writes: the CLI refuses an
    existing path of another kind there before any work (saev.commands.base.check_options)."""

    want: Want


OutputFolder = Annotated[pathlib.Path, OutputMark("folder")]
OutputFile = Annotated[pathlib.Path, OutputMark("file")]


def kind(mode: int) -> str:
    """What an `st_mode` is, in words with an article ("a character device"), for messages."""
    return next((words for test, words in _KINDS if test(mode)), "a special file")


def existing_kind(path: str | os.PathLike) -> str | None:
    """What `path` names, following symbolic links ("a file", "a folder", "a FIFO", ...); None when
    nothing is there. A link whose target is missing is "a broken symbolic link"."""
    try:
        return kind(os.stat(path).st_mode)
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else None
    except NotADirectoryError:
        return None  # a parent is a file: creating it will fail with its own message
    except OSError as err:  # e.g. a symlink loop, a folder without search permission
        return f"unreadable ({err.strerror})"


def check_output(path: str | os.PathLike, want: Want = "file", what: str = "") -> None:
    """Refuse an existing `path` that is not a regular file (or a folder, for `want="folder"`):
    saev never replaces what is not its kind of output. `what` names the option ("--out ")."""
    found = existing_kind(path)
    if found is not None and found != f"a {want}":
        advice = (
            "saev writes only over regular files, with or without --overwrite; give another path"
            if want == "file"
            else "give a folder (it may not exist yet)"
        )
        raise ConfigError(f"{what}{os.fspath(path)} is {found}, not a {want}; {advice}.")


def check_input(
    path: str | os.PathLike, what: str = "file", error: type[SaevError] = ConfigError
) -> pathlib.Path:
    """`path` if it is a regular file; otherwise `error` naming it and saying what it is (missing,
    a folder, a FIFO, a device, ...). Checked before opening: reading a FIFO or a terminal blocks
    forever, and a device file never ends."""
    path = pathlib.Path(path)
    found = existing_kind(path)
    if found is None:
        raise error(f"{path}: no such {what}.")
    if found != "a file":
        raise error(f"{path}: is {found}, not a {what}; saev reads only regular files.")
    return path


def read_input(
    path: str | os.PathLike, what: str = "file", error: type[SaevError] = ConfigError, limit: int = -1
) -> bytes:
    """The bytes of a regular file (the first `limit` if given), after `check_input`; read errors
    become `error` naming the file."""
    path = check_input(path, what, error)
    try:
        with path.open("rb") as f:
            return f.read(limit)
    except OSError as err:
        raise error(f"{path}: cannot read: {err.strerror}.") from None


def read_text(path: str | os.PathLike, what: str = "file", error: type[SaevError] = ConfigError) -> str:
    """A regular file's UTF-8 text (see `read_input`)."""
    try:
        return read_input(path, what, error).decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}).") from None


def read_json(path: str | os.PathLike, what: str = "JSON file", error: type[SaevError] = ConfigError) -> Any:
    """A regular file's JSON value (see `read_input`); invalid JSON is `error` naming the file."""
    text = read_text(path, what, error)
    try:
        return json.loads(text, parse_constant=_no_constant)
    # ValueError covers decoding errors, NaN and Infinity (not JSON, though Python writes them), and
    # integers past Python's digit limit; deeply nested JSON exhausts the recursion limit instead.
    except (ValueError, RecursionError) as err:
        raise error(f"{path}: {what} is not valid JSON ({err}).") from None


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, durable: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success it replaces `path`, on error it is removed.
    An existing `path` that is not a regular file is refused first (`check_output`). `durable`
    fsyncs before the rename; files that are cheap to make again (thumbnails) skip it."""
    path = pathlib.Path(path)
    check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with naming_errors(path), os.fdopen(fd, mode) as f:
            with _unwrapped_os_errors():
                yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        check_output(path)  # nothing but a file may have appeared there while writing
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


def save_image(path: str | os.PathLike, image: Image.Image, **params: Any) -> None:
    """Atomically write a Pillow image, in the format its suffix names (`params` go to Pillow)."""
    path = pathlib.Path(path)
    with atomic_open(path, durable=False) as f:
        image.save(f, format=Image.registered_extensions().get(path.suffix.lower()), **params)


@contextlib.contextmanager
def _unwrapped_os_errors() -> Iterator[None]:
    """torch.save reports a write that failed midway (a disk filling up) as "RuntimeError: [enforce
    fail at inline_container.cc] unexpected pos", with the OSError only as its context; raise that
    OSError, so that a full disk reads as one."""
    try:
        yield
    except RuntimeError as err:
        if isinstance(err.__context__, OSError):
            raise err.__context__ from None
        raise


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Atomically write `obj` as UTF-8 JSON. A NaN or infinity is refused (NonFiniteError naming
    its key): JSON has no such numbers, and a result holding one is garbage to report, not to save.
    Undefined values are None (null)."""
    where = _first_nonfinite(obj, "")
    if where is not None:
        raise NonFiniteError(
            f"{path}: not written: {where or 'the value'} is not a finite number (a bug in saev, or "
            "non-finite input that should have been refused earlier; please report it)."
        )
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent, allow_nan=False)
        f.write("\n")


def _first_nonfinite(obj: Any, key: str) -> str | None:
    """The key path (`a.b[3]`) of the first NaN or infinity in `obj`, None when there is none."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else key
    if isinstance(obj, dict):
        items: Any = ((f"{key}.{k}" if key else str(k), v) for k, v in obj.items())
    elif isinstance(obj, list | tuple):
        items = ((f"{key}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    return next((found for k, v in items if (found := _first_nonfinite(v, k)) is not None), None)


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

"""Image sources for recording: a folder tree (ImageFolder order and labels) or a Hugging Face dataset."""

import dataclasses
import errno
import hashlib
import logging
import os
import pathlib
import stat
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from saev.data.images import load_rgb, to_rgb
from saev.errors import ConfigError, ImageError
from saev.fileio import kind

logger = logging.getLogger("saev.data")

EXTENSIONS = frozenset(ext.lower() for ext in Image.registered_extensions())


@runtime_checkable
class ImageSource(Protocol):
    def __len__(self) -> int: ...

    def load(self, i: int) -> Image.Image:
        """RGB image i; raises ImageError when it cannot be decoded."""

    def record(self, i: int) -> dict[str, Any]:
        """What images.json stores for image i: its path (or dataset index) and label."""

    def describe(self) -> dict[str, Any]:
        """The `data` entry of metadata.json."""

    def fingerprint(self) -> str:
        """Changes when the list of images changes (guards resumed recordings)."""


@dataclasses.dataclass(frozen=True)
class FolderSource:
    """Every image file under `root`, recursively.

    Files directly in `root` come first (no label), then each first-level subfolder in sorted
    order, walked like torchvision's ImageFolder, with the subfolder's name as the label. For a
    class-folder tree this is exactly ImageFolder's order.
    """

    root: pathlib.Path
    files: tuple[str, ...]
    """Paths relative to root, POSIX separators."""
    n_ignored: int = 0
    """Files without an image extension."""

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> Image.Image:
        return load_rgb(self.root / self.files[i])

    def record(self, i: int) -> dict[str, Any]:
        rel = self.files[i]
        return {"path": rel, "label": rel.split("/", 1)[0] if "/" in rel else None}

    def describe(self) -> dict[str, Any]:
        return {"__class__": "ImageFolder", "root": str(self.root)}

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.files).encode()).hexdigest()


def scan_folder(root: str | os.PathLike) -> FolderSource:
    root = _image_folder(root)
    scan = _Scan(root)
    top_files, top_dirs = scan.listing("")
    files: list[str] = []
    ignored = 0
    for name in top_files:
        ignored += _keep(name, name, files)
    for name in top_dirs:
        # Sorted by path, as `sorted(os.walk(...))` did, so stores recorded before keep their order.
        for rel_dir, fnames in sorted(scan.tree(name)):
            for fname in fnames:
                ignored += _keep(fname, f"{rel_dir}/{fname}", files)
    if not files:
        raise ConfigError(
            f"{root}: no image files found (looked for {', '.join(sorted(EXTENSIONS)[:8])}, ...)."
        )
    return FolderSource(root, tuple(files), ignored)


def _image_folder(given: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(given).expanduser()
    try:
        root = path.resolve()
        mode = os.stat(root).st_mode
    except FileNotFoundError:
        raise ConfigError(f"{path}: image folder not found.") from None
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop, before Python 3.13
        raise ConfigError(f"{path}: cannot open the image folder ({err}).") from None
    if not stat.S_ISDIR(mode):
        raise ConfigError(f"{root}: {kind(mode)}, not an image folder.")
    return root


class _Scan:
    """Lists an image folder, following directory symlinks but entering each real directory once.

    A symlink to a directory inside the folder is not followed at all (that directory's files are
    listed under their own path); one leading outside is followed the first time its target is
    met. So symlink cycles end and no image is listed twice. Entries that cannot be image files
    (broken links, links to themselves, FIFOs, sockets, devices) are skipped with a warning and
    never opened.
    """

    def __init__(self, root: pathlib.Path):
        self.root = root
        st = os.stat(root)
        self.seen = {(st.st_dev, st.st_ino): str(root)}
        """Each real directory entered, by (device, inode), and the path it was entered by."""

    def listing(self, rel: str) -> tuple[list[str], list[str]]:
        """Names of the regular files and of the directories to enter in `rel`, in name order."""
        path = self.root / rel
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as err:
            logger.warning("skipped %s: cannot list this folder (%s)", path, err.strerror)
            return [], []
        files, dirs = [], []
        for entry in entries:
            try:
                found = self._kind(entry)
            except OSError as err:
                logger.warning("skipped %s: %s", entry.path, _link_problem(entry.path, err))
                continue
            if found == "file":
                files.append(entry.name)
            elif found == "dir":
                dirs.append(entry.name)
            elif found is not None:
                logger.warning("skipped %s: %s, not an image file", entry.path, found)
        return files, dirs

    def tree(self, top: str) -> list[tuple[str, list[str]]]:
        """(folder, file names) for `top` and every folder below it."""
        out, stack = [], [top]
        while stack:
            rel = stack.pop()
            files, dirs = self.listing(rel)
            out.append((rel, files))
            stack.extend(f"{rel}/{name}" for name in reversed(dirs))
        return out

    def _kind(self, entry: os.DirEntry) -> str | None:
        """`file`, `dir` (a folder to enter), None (skipped and reported) or the kind of a special file."""
        if entry.is_symlink():
            st = os.stat(entry.path)
            if stat.S_ISDIR(st.st_mode):
                return self._enter(entry.path, st, link=True)
        elif entry.is_dir(follow_symlinks=False):
            return self._enter(entry.path, entry.stat(follow_symlinks=False), link=False)
        elif entry.is_file(follow_symlinks=False):
            return "file"  # the common case decides from the directory listing, without a stat call
        else:
            st = entry.stat(follow_symlinks=False)
        return "file" if stat.S_ISREG(st.st_mode) else kind(st.st_mode)

    def _enter(self, path: str, st: os.stat_result, link: bool) -> str | None:
        key = (st.st_dev, st.st_ino)
        if link:
            target = os.path.realpath(path)
            if os.path.commonpath([target, self.root]) == str(self.root):
                logger.warning(
                    "skipped %s: a symlink to %s, inside the image folder (scanned under its own path)",
                    path,
                    target,
                )
                return None
        if key in self.seen:
            logger.warning("skipped %s: the same folder as %s, already scanned", path, self.seen[key])
            return None
        self.seen[key] = path
        return "dir"


def _link_problem(path: str, err: OSError) -> str:
    if err.errno == errno.ENOENT and os.path.islink(path):
        return f"a broken symlink (to {os.readlink(path)})"
    if err.errno == errno.ELOOP:
        return f"a symlink that leads back to itself ({err.strerror})"
    return err.strerror or str(err)


def _keep(fname: str, rel: str, files: list[str]) -> int:
    if os.path.splitext(fname)[1].lower() in EXTENSIONS:
        files.append(rel)
        return 0
    return 1


@dataclasses.dataclass
class HfSource:
    """A Hugging Face `datasets` split with an image column (and optionally a class label)."""

    name: str
    split: str

    def __post_init__(self):
        try:
            import datasets  # optional extra .[hf], and 1 s to import
        except ImportError:
            raise ConfigError(
                "hf: image sources need the `datasets` package: pip install -e '.[hf]'."
            ) from None
        try:
            self.ds = datasets.load_dataset(self.name, split=self.split)
        except Exception as err:  # datasets raises many types for missing/unreachable data
            raise ConfigError(f"hf:{self.name}:{self.split}: cannot load dataset ({err}).") from None
        features = self.ds.features
        self.image_key = next((k for k, f in features.items() if type(f).__name__ == "Image"), None)
        if self.image_key is None:
            raise ConfigError(f"hf:{self.name}:{self.split}: no image column (columns: {list(features)}).")
        label = features.get("label")
        self.label_names = getattr(label, "names", None)

    def __len__(self) -> int:
        return len(self.ds)

    def load(self, i: int) -> Image.Image:
        try:
            img = self.ds[i][self.image_key]
        except Exception as err:
            raise ImageError(f"hf:{self.name}:{self.split}[{i}]: cannot decode ({err})") from None
        return to_rgb(img)

    def record(self, i: int) -> dict[str, Any]:
        label = self.ds[i].get("label") if "label" in self.ds.features else None
        if self.label_names is not None and label is not None:
            label = self.label_names[label]
        return {"index": i, "label": label}

    def describe(self) -> dict[str, Any]:
        return {"__class__": "HfDataset", "name": self.name, "split": self.split}

    def fingerprint(self) -> str:
        return f"{self.ds._fingerprint}:{len(self.ds)}"


def open_source(spec: str) -> ImageSource:
    """`hf:NAME:SPLIT` for a Hugging Face dataset, anything else is a folder."""
    if spec.startswith("hf:"):
        name, _, split = spec[3:].rpartition(":")
        if not name or not split:
            raise ConfigError(f"{spec}: expected hf:NAME:SPLIT, e.g. hf:ILSVRC/imagenet-1k:train.")
        return HfSource(name, split)
    return scan_folder(spec)

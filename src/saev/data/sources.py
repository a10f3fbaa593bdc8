"""Image sources for recording: a folder tree (ImageFolder order and labels) or a Hugging Face dataset."""

import dataclasses
import hashlib
import os
import pathlib
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from saev.data.images import load_rgb, to_rgb
from saev.errors import ConfigError, ImageError

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
    root = pathlib.Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"{root}: image folder not found.")
    files, ignored = [], 0
    top = sorted(os.scandir(root), key=lambda e: e.name)
    for entry in top:
        if entry.is_file():
            ignored += _keep(entry.name, entry.name, files)
    for entry in top:
        if entry.is_dir():
            for dirpath, _, fnames in sorted(os.walk(entry.path, followlinks=True)):
                rel_dir = pathlib.Path(dirpath).relative_to(root).as_posix()
                for fname in sorted(fnames):
                    ignored += _keep(fname, f"{rel_dir}/{fname}", files)
    if not files:
        raise ConfigError(
            f"{root}: no image files found (looked for {', '.join(sorted(EXTENSIONS)[:8])}, ...)."
        )
    return FolderSource(root, tuple(files), ignored)


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

"""Finding the source image of every store index, from images.json or a user-given source.

A record's path is read only inside the image root: one that is absolute or climbs out with `..`
(saev never writes either; an edited images.json can) is refused with a warning and counted as
missing, so neither `saev visuals` nor `saev serve` ever draws, links or serves a file outside the
root. The check is on the recorded path, not on where symbolic links inside the root lead: links
are the folder owner's choice, and the scan that recorded the store followed them too.
"""

import logging
import pathlib
from typing import Any

from PIL import Image

from saev.data.images import load_rgb
from saev.data.sources import open_source
from saev.data.store import ShardStore
from saev.errors import ConfigError, ImageError, StoreError
from saev.fileio import existing_kind

logger = logging.getLogger("saev.visuals")


class ImageLookup:
    """Store index -> RGB image (None when it moved, vanished or lies outside the image root), with
    a description for captions."""

    def __init__(self, store: ShardStore, override: str | None = None):
        self.records = store.images
        self.source = None
        self.root: pathlib.Path | None = None
        if override is not None and override.startswith("hf:"):
            self.source = open_source(override)
        elif override is not None:
            self.root = _given_folder(override)
            if not self.records:
                self.source = open_source(override)  # no images.json: index i is the source's image i
        elif store.image_source.get("__class__") == "ImageFolder":
            root = store.image_source.get("root")
            if not isinstance(root, str):
                raise StoreError(
                    f"{store.path / 'images.json'}: its ImageFolder source names no root folder; "
                    "pass --images with the folder of its images."
                )
            self.root = pathlib.Path(root)
            if existing_kind(self.root) != "a folder":
                # The store's activations are still worth drawing: placeholders, not an error.
                logger.warning(
                    "%s: its images were recorded from %s, which is no longer a folder (moved?); they "
                    "are drawn as placeholders. Give --images with their new location to show them.",
                    store.path,
                    self.root,
                )
        elif store.image_source.get("__class__") == "HfDataset":
            name, split = store.image_source.get("name"), store.image_source.get("split")
            if not (isinstance(name, str) and isinstance(split, str)):
                raise StoreError(
                    f"{store.path / 'images.json'}: its HfDataset source lacks a name or split; "
                    "pass --images hf:NAME:SPLIT."
                )
            self.source = open_source(f"hf:{name}:{split}")
        if not self.records and self.source is None:
            raise ConfigError(
                f"{store.path} has no images.json (written by another tool?); pass --images SOURCE to show its images."
            )
        self.missing: set[int] = set()
        self.refused: set[int] = set()
        """Records whose path leads outside the root (warned about once each)."""

    def describe(self, i: int) -> dict[str, Any]:
        if self.records:
            return self.records[i]
        assert self.source is not None, "__init__ refuses a store with neither records nor a source"
        return self.source.record(i)

    def path(self, i: int) -> str:
        rec = self.describe(i)
        if "path" not in rec:
            return f"index {rec.get('index', i)}"
        file = self._file(self.root, i) if self.root is not None else None
        return str(rec["path"]) if file is None else str(file)

    def load(self, i: int) -> Image.Image | None:
        try:
            if self.records and "path" in self.records[i] and self.root is not None:
                file = self._file(self.root, i)
                if file is not None:
                    return load_rgb(file)
            elif self.source is not None:
                return self.source.load(i if not self.records else self.records[i].get("index", i))
        except ImageError:
            pass
        self.missing.add(i)
        return None

    def _file(self, root: pathlib.Path, i: int) -> pathlib.Path | None:
        """Record i's file under `root` (the image root), or None (warned once, counted missing) when
        its path is not a relative path that stays inside the root."""
        rel = self.records[i]["path"]
        if isinstance(rel, str) and "\0" not in rel:
            pure = pathlib.PurePath(rel)
            if not pure.is_absolute() and ".." not in pure.parts:
                return root / pure
        if i not in self.refused:
            logger.warning(
                "images.json record %d: path %r is not inside the image root %s (absolute, or "
                "climbing out with '..'); not read, drawn as a placeholder.",
                i,
                rel,
                root,
            )
            self.refused.add(i)
        self.missing.add(i)
        return None


def _given_folder(given: str) -> pathlib.Path:
    """`--images`, a folder the user named: one that is not there is a mistake to report, unlike a
    store's recorded folder that has moved since."""
    root = pathlib.Path(given).expanduser()
    found = existing_kind(root)
    if found != "a folder":
        raise ConfigError(
            f"--images {given}: {'no such folder' if found is None else f'is {found}, not a folder'}."
        )
    return root.resolve()

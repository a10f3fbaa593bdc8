"""Finding the source image of every store index, from images.json or a user-given source."""

import pathlib
from typing import Any

from PIL import Image

from saev.data.images import load_rgb
from saev.data.sources import open_source
from saev.data.store import ShardStore
from saev.errors import ConfigError, ImageError


class ImageLookup:
    """Store index -> RGB image (None when it moved or vanished), with a description for captions."""

    def __init__(self, store: ShardStore, override: str | None = None):
        self.records = store.images
        self.source = None
        self.root: pathlib.Path | None = None
        if override is not None and override.startswith("hf:"):
            self.source = open_source(override)
        elif override is not None:
            self.root = pathlib.Path(override).expanduser().resolve()
            if not self.records:
                self.source = open_source(override)  # no images.json: index i is the source's image i
        elif store.image_source.get("__class__") == "ImageFolder":
            self.root = pathlib.Path(store.image_source["root"])
        elif store.image_source.get("__class__") == "HfDataset":
            self.source = open_source(f"hf:{store.image_source['name']}:{store.image_source['split']}")
        if not self.records and self.source is None:
            raise ConfigError(
                f"{store.path} has no images.json (written by another tool?); pass --images SOURCE to show its images."
            )
        self.missing: set[int] = set()

    def describe(self, i: int) -> dict[str, Any]:
        if self.records:
            return self.records[i]
        return self.source.record(i)

    def path(self, i: int) -> str:
        rec = self.describe(i)
        if "path" in rec:
            return str(self.root / rec["path"]) if self.root else rec["path"]
        return f"index {rec.get('index', i)}"

    def load(self, i: int) -> Image.Image | None:
        try:
            if self.records and "path" in self.records[i] and self.root is not None:
                return load_rgb(self.root / self.records[i]["path"])
            return self.source.load(i if not self.records else self.records[i].get("index", i))
        except ImageError:
            self.missing.add(i)
            return None

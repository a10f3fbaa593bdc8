"""Reading activation stores: `open_shards(path)` for stores written by saev or by the reference project.

Layout (reference protocol 1.0.0): `metadata.json`, optional `shards.json`, and raw C-order shards
`acts%06d.bin` shaped [imgs, layers, tokens, d_vit]; bfloat16 stores hold the raw 16 bits.
"""

import functools
import json
import math
import pathlib
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from saev.data import metadata as md
from saev.data.layout import Run, Shard, Tokens, TokenView, runs, token_view
from saev.errors import StoreError

STATE_FILE = ".saev-recording.json"
"""Present while a recording is unfinished (see saev.activations.recording)."""

RAW_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


def to_float32(raw: np.ndarray, dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    """Decode stored values (float32, float16 or raw bfloat16 bits) into float32."""
    if dtype == "bfloat16":
        widened = raw.astype(np.uint32)
        widened <<= 16
        decoded = widened.view(np.float32)
        if out is None:
            return decoded
        out[...] = decoded
        return out
    if out is None:
        return np.array(raw, dtype=np.float32)
    out[...] = raw
    return out


def to_stored(acts: Float[torch.Tensor, "..."], dtype: str) -> np.ndarray:
    """Encode activations in a store dtype (bfloat16 as its raw 16 bits), on the CPU."""
    if dtype == "bfloat16":
        return acts.to(torch.bfloat16).cpu().view(torch.int16).numpy().view(np.uint16)
    return acts.to(getattr(torch, dtype)).cpu().numpy()


class ShardStore:
    """An opened store. `len(store)` is the number of images; `acts(i)` reads one image."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        if not self.path.is_dir():
            raise StoreError(f"{self.path}: no such store directory.")
        if not (self.path / "metadata.json").exists() and (self.path / STATE_FILE).exists():
            raise StoreError(
                f"{self.path}: recording did not finish; rerun the same `saev activations` command to resume it."
            )
        self.meta = md.read(self.path / "metadata.json")
        self.metadata: dict[str, Any] = json.loads((self.path / "metadata.json").read_text())
        self.shards = self._read_shards()

    def __len__(self) -> int:
        return self.meta.n_imgs

    def __repr__(self) -> str:
        m = self.meta
        return f"ShardStore({str(self.path)!r}, {m.vit_family}/{m.vit_ckpt}, layers={list(m.layers)}, n_imgs={m.n_imgs}, dtype={m.dtype})"

    @property
    def layers(self) -> tuple[int, ...]:
        return self.meta.layers

    @property
    def n_tokens(self) -> int:
        return self.meta.n_tokens

    @property
    def d_vit(self) -> int:
        return self.meta.d_vit

    def raw(self, shard_i: int) -> np.ndarray:
        """Memory map of one shard's recorded images in the stored dtype (bfloat16 as uint16 bits)."""
        return self._memmap(shard_i)

    def read(
        self,
        shard_i: int,
        imgs: slice | np.ndarray,
        layer_i: int,
        tokens: slice | np.ndarray,
        out: Float[np.ndarray, "..."] | None = None,
    ) -> Float[np.ndarray, "..."]:
        """Activations of one layer as float32: `shard[imgs, layer_i, tokens]` with numpy indexing
        (slices read contiguous blocks; index arrays pick (image, token) pairs). Every read of a
        store's activations goes through here."""
        return to_float32(self._memmap(shard_i)[imgs, layer_i, tokens], self.meta.dtype, out=out)

    def runs(self, images: range, max_imgs: int) -> list[Run]:
        """`images` as runs of at most `max_imgs` images within one shard each."""
        return runs(self.shards, images, max_imgs)

    def token_view(self, tokens: Tokens) -> TokenView:
        return token_view(self.meta, tokens, self.path)

    def locate(self, image_i: int) -> tuple[int, int]:
        """(shard, position in shard) of a global image index."""
        if not 0 <= image_i < len(self):
            raise IndexError(f"image {image_i} out of range [0, {len(self)}) in {self.path}")
        per = self.meta.n_imgs_per_shard
        return image_i // per, image_i % per

    def acts(self, image_i: int) -> Float[np.ndarray, "layers tokens d_vit"]:
        """Activations of one image as float32 [n_layers, n_tokens, d_vit]."""
        shard_i, pos = self.locate(image_i)
        return to_float32(self._memmap(shard_i)[pos], self.meta.dtype)

    @functools.cached_property
    def layout(self) -> md.PatchLayout:
        """Patch grid and register count: from layout.json, else a square grid (older stores)."""
        path = self.path / md.LAYOUT_FILE
        if path.exists():
            return md.read_layout(path, self.meta)
        side = math.isqrt(self.meta.n_patches_per_img)
        if side * side != self.meta.n_patches_per_img:
            raise StoreError(
                f"{self.path}: {self.meta.n_patches_per_img} patches do not form a square grid and the store "
                f"has no {md.LAYOUT_FILE} giving the grid (recorded by another tool?)."
            )
        return md.PatchLayout((side, side))

    def layer_label(self, layer: int) -> int:
        """The store's own name of `layer`: as recorded, or the same block counted from the other
        end when layout.json gives the model's depth."""
        if layer in self.meta.layers:
            return layer
        n_blocks = self.layout.n_blocks if (self.path / md.LAYOUT_FILE).exists() else None
        if n_blocks is not None and -n_blocks <= layer < n_blocks:
            for label in self.meta.layers:
                if label % n_blocks == layer % n_blocks:
                    return label
        raise StoreError(
            f"{self.path}: layer {layer} is not in this store; it holds layers {list(self.meta.layers)}."
        )

    def layer_index(self, layer: int) -> int:
        """Position of `layer` (either sign, see `layer_label`) on the shards' layer axis."""
        return self.meta.layers.index(self.layer_label(layer))

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the patch grid; patches are stored in row-major order."""
        return self.layout.grid

    @functools.cached_property
    def images(self) -> list[dict[str, Any]]:
        """Path (or dataset index) and label of every image, from images.json; empty without it."""
        return self._images_json.get("images", [])

    @functools.cached_property
    def image_source(self) -> dict[str, Any]:
        """How images.json names its source, e.g. {"__class__": "ImageFolder", "root": ...}."""
        return self._images_json.get("source", {})

    @functools.cached_property
    def _images_json(self) -> dict[str, Any]:
        path = self.path / "images.json"
        return json.loads(path.read_text()) if path.exists() else {}

    @functools.cache  # noqa: B019 (one map per shard, for the store's lifetime)
    def _memmap(self, shard_i: int) -> np.ndarray:
        shard = self.shards[shard_i]
        shape = (shard.n_imgs, *self.meta.shard_shape[1:])
        return np.memmap(self.path / shard.name, dtype=RAW_DTYPES[self.meta.dtype], mode="r", shape=shape)

    def _read_shards(self) -> list[Shard]:
        listing = self.path / "shards.json"
        if listing.exists():
            entries = [(e["name"], int(e["n_imgs"])) for e in json.loads(listing.read_text())]
        else:
            entries = self._shards_from_sizes()
        shards, start = [], 0
        for name, n in entries:
            shards.append(Shard(name, n, start))
            start += n
        if start != self.meta.n_imgs:
            raise StoreError(
                f"{self.path}: shards hold {start} images but metadata.json says n_imgs={self.meta.n_imgs}."
            )
        for shard in shards:
            self._check_size(shard)
        return shards

    def _shards_from_sizes(self) -> list[tuple[str, int]]:
        """Older stores have no shards.json: every shard holds n_imgs_per_shard images but the last."""
        per, total = self.meta.n_imgs_per_shard, self.meta.n_imgs
        entries, k = [], 0
        while k * per < total:
            name = f"acts{k:06d}.bin"
            path = self.path / name
            if not path.exists():
                raise StoreError(
                    f"{self.path}: {name} is missing (metadata.json says {total} images, {per} per shard)."
                )
            entries.append((name, min(per, total - k * per, path.stat().st_size // self.meta.bytes_per_img)))
            k += 1
        return entries

    def _check_size(self, shard: Shard) -> None:
        path = self.path / shard.name
        if not path.exists():
            raise StoreError(f"{self.path}: {shard.name} is missing.")
        need = shard.n_imgs * self.meta.bytes_per_img
        if path.stat().st_size < need:
            raise StoreError(
                f"{path}: truncated ({path.stat().st_size} bytes, {shard.n_imgs} images need {need})."
            )


def open_shards(path: str | pathlib.Path) -> ShardStore:
    """Open an activation store written by saev or the reference project (any metadata era)."""
    return ShardStore(path)

"""Reading activation stores: `open_shards(path)` for stores written by saev or by the reference project.

Layout (reference protocol 1.0.0): `metadata.json`, optional `shards.json`, and raw C-order shards
`acts%06d.bin` shaped [imgs, layers, tokens, d_vit]; bfloat16 stores hold the raw 16 bits.
"""

import functools
import hashlib
import logging
import math
import os
import pathlib
import re
import stat
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from saev.data import metadata as md
from saev.data.layout import Run, Shard, Tokens, TokenView, runs, token_view
from saev.errors import StoreError
from saev.fileio import existing_kind, read_json

logger = logging.getLogger("saev.data")
STATE_FILE = ".saev-recording.json"
"""Present while a recording is unfinished (see saev.activations.recording)."""

RAW_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
HASH_NAME = re.compile(r"[0-9a-f]{64}")
"""A store folder named by its metadata's hash (see `Metadata.hash`)."""


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

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        if not self.path.is_dir():
            raise StoreError(f"{self.path}: no such store directory.")
        if not (self.path / "metadata.json").exists() and (self.path / STATE_FILE).exists():
            raise StoreError(
                f"{self.path}: recording did not finish; rerun the same `saev activations` command to resume it."
            )
        self.meta = md.read(self.path / "metadata.json")
        self.metadata: dict[str, Any] = read_json(self.path / "metadata.json", "store metadata", StoreError)
        # Everything below compares metadata.json with the other files using stat() calls and
        # small reads only: a store can hold hundreds of GB.
        if (self.path / md.LAYOUT_FILE).exists():
            _ = self.layout  # its grid must match n_patches_per_img
        self._check_layer_order()
        self.shards, self._shard_stats = self._read_shards()
        self._check_hash()

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
        n_blocks = self.n_blocks
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

    @functools.cached_property
    def n_blocks(self) -> int | None:
        """The model's depth, when layout.json gives it."""
        return self.layout.n_blocks if (self.path / md.LAYOUT_FILE).exists() else None

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
        """images.json, checked: a source object and one record object per stored image."""
        path = self.path / "images.json"
        if existing_kind(path) is None:
            return {}
        dct = read_json(path, "image list", StoreError)
        expected = f'{{"source": {{...}}, "images": [one object per image, {self.meta.n_imgs} in all]}}'
        if not isinstance(dct, dict):
            raise StoreError(f"{path}: expected {expected}.")
        images, source = dct.get("images", []), dct.get("source", {})
        if not isinstance(source, dict) or not isinstance(images, list):
            raise StoreError(f"{path}: expected {expected}.")
        if images and (len(images) != self.meta.n_imgs or not all(isinstance(r, dict) for r in images)):
            raise StoreError(
                f"{path}: expected {expected}; it has {len(images)} entries"
                f"{'' if all(isinstance(r, dict) for r in images) else ', not all objects'}."
            )
        return dct

    def image_name(self, image_i: int) -> str:
        """`image 3 (cats/tabby.jpg)`: the index and, when images.json records it, the source image."""
        rec = self.images[image_i] if image_i < len(self.images) else {}
        if "path" in rec:
            return f"image {image_i} ({rec['path']})"
        return f"image {image_i} (dataset index {rec['index']})" if "index" in rec else f"image {image_i}"

    def nonfinite_error(
        self, image_i: int, token_i: int, layer: int, row: Float[np.ndarray, " d_vit"], needed_by: str
    ) -> StoreError:
        """The error for a NaN or infinite activation in `row`, the activations of `token_i` of
        `image_i`: which shard file, image and token hold it."""
        value = float(row[~np.isfinite(row)][0])
        shard_i, _ = self.locate(image_i)
        cls = int(self.meta.cls_token)
        token = "[CLS]" if token_i < cls else f"patch {token_i - cls}"
        hint = (
            " float16 overflows past 65,504: record the store again with --dtype bfloat16 or float32."
            if self.meta.dtype == "float16" and math.isinf(value)
            else " Record the store again (a model run in too low a precision, or a disk error, "
            "writes these)."
        )
        return StoreError(
            f"{self.path / self.shards[shard_i].name}: activation {value} at {self.image_name(image_i)}, "
            f"token {token_i} ({token}) of layer {self.layer_label(layer)}; {needed_by} needs finite "
            f"activations.{hint}"
        )

    @functools.cached_property
    def fingerprint(self) -> str:
        """Changes whenever the store's files do (metadata, shard list, and each shard's size and
        modification time), so anything cached beside the store can tell it is stale."""
        h = hashlib.sha256()
        for name in ("metadata.json", "shards.json"):
            path = self.path / name
            h.update(path.read_bytes() if path.exists() else b"")
        for shard, st in zip(self.shards, self._shard_stats, strict=True):
            h.update(f"{shard.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    @functools.cache  # noqa: B019 (one map per shard, for the store's lifetime)
    def _memmap(self, shard_i: int) -> np.ndarray:
        shard = self.shards[shard_i]
        shape = (shard.n_imgs, *self.meta.shard_shape[1:])
        return np.memmap(self.path / shard.name, dtype=RAW_DTYPES[self.meta.dtype], mode="r", shape=shape)

    def _check_layer_order(self) -> None:
        """The shards' layer axis follows the model's forward hooks, so ascending block order; the
        list in metadata.json must be in that order for `layer_index` to find the right slice."""
        layers, n_blocks = self.meta.layers, self.n_blocks
        if n_blocks is not None:
            if not all(-n_blocks <= layer < n_blocks for layer in layers):
                raise StoreError(
                    f"{self.path / 'metadata.json'}: layers {list(layers)} do not all exist in the "
                    f"{n_blocks}-block model that {md.LAYOUT_FILE} describes."
                )
            blocks = [layer % n_blocks for layer in layers]
        elif all(layer >= 0 for layer in layers) or all(layer < 0 for layer in layers):
            blocks = list(layers)
        else:
            return  # both signs and no model depth: the block order cannot be known
        if blocks != sorted(set(blocks)):
            raise StoreError(
                f"{self.path / 'metadata.json'}: layers {list(layers)} are not listed in ascending "
                f"block order (blocks {blocks}), but the shards hold the layers in the order the model "
                "runs them; metadata.json must list them that way, each block once."
            )

    def _read_shards(self) -> tuple[list[Shard], list[os.stat_result]]:
        per, total = self.meta.n_imgs_per_shard, self.meta.n_imgs
        listing = self.path / "shards.json"
        if listing.exists():
            entries = _read_listing(listing)
        else:  # older stores: every shard holds n_imgs_per_shard images but the last
            n_shards = -(-total // per)
            entries = [(f"acts{k:06d}.bin", min(per, total - k * per)) for k in range(n_shards)]
            extra = self.path / f"acts{n_shards:06d}.bin"
            if extra.exists():
                raise StoreError(
                    f"{extra} exists, but metadata.json (n_imgs {total:,}, {per} images per shard) implies "
                    f"{n_shards} shards: n_imgs is too small, or the file belongs to another store."
                )
        stats = [self._stat_shard(name, listing.exists()) for name, _ in entries]
        names = [name for name, _ in entries]
        if len(set(names)) != len(names):
            raise StoreError(f"{listing}: lists a shard twice ({names}).")
        shards, start = [], 0
        for k, (name, n) in enumerate(entries):
            last = k == len(entries) - 1
            # Writers fill every shard but the last, and `locate` relies on it.
            if n > per or (n < per and not last) or n < 1:
                raise StoreError(
                    f"{listing}: {name} holds {n} images, but metadata.json implies {self._per_shard()} "
                    "and only the last shard holds fewer (at least one)."
                )
            shards.append(Shard(name, n, start))
            start += n
        if start != total:
            raise StoreError(
                f"{listing}: the shards hold {start:,} images but metadata.json says n_imgs={total:,}."
            )
        if shards and not listing.exists():
            self._check_padding(shards[-1])
        return shards, stats

    def _per_shard(self) -> str:
        m = self.meta
        budget = "n_patches_per_shard" if "n_patches_per_shard" in self.metadata else "max_patches_per_shard"
        return (
            f"{m.n_imgs_per_shard} images per shard ({budget} {m.max_patches_per_shard:,} "
            f"// {len(m.layers)} layers // {m.n_tokens} tokens)"
        )

    def _stat_shard(self, name: Any, listed: bool) -> os.stat_result:
        """The shard's file, which must be a regular file directly in the store (a shards.json from
        elsewhere must not make saev read other files) of exactly the size metadata.json implies."""
        m = self.meta
        where = self.path / "shards.json" if listed else self.path / "metadata.json"
        if (
            not isinstance(name, str)
            or name in ("", ".", "..")
            or pathlib.PurePath(name).name != name
            or "\\" in name  # a Windows path separator
        ):
            raise StoreError(f"{where}: shard name {name!r} is not a plain file name in the store folder.")
        path = self.path / name
        if path.resolve().parent != self.path.resolve():
            raise StoreError(
                f"{where}: shard {name} is a link to {path.resolve()}, outside the store folder; "
                "saev reads shards only from the store folder (move the file into it)."
            )
        try:
            st = path.stat()
        except FileNotFoundError:
            raise StoreError(
                f"{self.path}: {name} is missing (metadata.json says {m.n_imgs:,} images, "
                f"{m.n_imgs_per_shard} per shard)."
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path}: not a regular file.")
        need = m.n_imgs_per_shard * m.bytes_per_img
        if st.st_size != need:
            tokens = f"n_patches_per_img {m.n_patches_per_img}" + (" + [CLS]" if m.cls_token else "")
            problem = "truncated" if st.st_size < need else "longer than a shard"
            raise StoreError(
                f"{path} has {st.st_size:,} bytes; metadata.json implies {need:,}: {self._per_shard()} "
                f"x {len(m.layers)} layers {list(m.layers)} x {m.n_tokens} tokens ({tokens}) "
                f"x d_vit {m.d_vit} x {md.DTYPES[m.dtype]} bytes (dtype {m.dtype}). Either the file is "
                f"{problem} or those metadata.json values are wrong (every shard file is written at "
                "full size)."
            )
        return st

    def _check_padding(self, shard: Shard) -> None:
        """Without shards.json, n_imgs alone says how many images the last shard holds. Writers leave
        zeros past the last image, so real data there means n_imgs is too small, and an all-zero last
        image suggests it is too large (reading one image each, not the store)."""
        raw = np.memmap(self.path / shard.name, dtype=np.uint8, mode="r")
        size = self.meta.bytes_per_img
        if (
            shard.n_imgs < self.meta.n_imgs_per_shard
            and raw[shard.n_imgs * size : (shard.n_imgs + 1) * size].any()
        ):
            raise StoreError(
                f"{self.path / shard.name} holds an image after image {self.meta.n_imgs - 1}, the last that "
                f"metadata.json's n_imgs={self.meta.n_imgs:,} counts (the store has no shards.json): "
                "n_imgs is too small."
            )
        if not raw[(shard.n_imgs - 1) * size : shard.n_imgs * size].any():
            logger.warning(
                "%s: image %d, the last that metadata.json's n_imgs=%d counts, is all zeros, like the "
                "padding after a store's last image: is n_imgs too large?",
                self.path / shard.name,
                self.meta.n_imgs - 1,
                self.meta.n_imgs,
            )

    def _check_hash(self) -> None:
        """A store folder is named by its metadata's hash, so a folder with a hash name whose
        metadata.json hashes to something else had that file edited. Only a warning: a user may have
        edited it on purpose, and the sizes were checked already (hashes are computed as saev does,
        also before images were skipped, and as the reference does)."""
        name = self.path.resolve().name
        if not HASH_NAME.fullmatch(name):
            return  # a renamed or hand-made store
        if name in {md.dict_hash(self.metadata, compact) for compact in (True, False)}:
            return
        skipped = self.path / "skipped.json"
        if skipped.exists():
            listed = read_json(skipped, "list of skipped images", StoreError)
            n_skipped = len(listed) if isinstance(listed, list) else 0
            # saev names the folder before recording, counting the images it will skip.
            if name == md.dict_hash(self.metadata | {"n_imgs": self.meta.n_imgs + n_skipped}):
                return
        logger.warning(
            "%s was changed after recording: it no longer hashes to the store's folder name %s. Its "
            "sizes match the shard files, but a changed layer number, model or dtype (float16 vs "
            "bfloat16) cannot be seen in sizes; restore the original metadata.json unless you meant to "
            "edit it.",
            self.path / "metadata.json",
            name,
        )


def _read_listing(path: pathlib.Path) -> list[tuple[Any, int]]:
    """(name, n_imgs) of each entry of shards.json, in order."""
    listing = read_json(path, "shard listing", StoreError)
    try:
        entries = [(entry["name"], entry["n_imgs"]) for entry in listing]
    except (TypeError, KeyError) as err:
        raise StoreError(f'{path}: expected a list of {{"name": ..., "n_imgs": ...}} ({err!r}).') from None
    for name, n in entries:
        if isinstance(n, bool) or not isinstance(n, int):
            raise StoreError(f"{path}: {name}: n_imgs {n!r} is not a whole number.")
    return entries


def nonfinite_rows(values: np.ndarray) -> np.ndarray:
    """Indices (over all axes but the last, one row per hit, in order) of the rows of `values` that
    hold a NaN or an infinity."""
    return np.argwhere(~np.isfinite(values).all(axis=-1))


def open_shards(path: str | os.PathLike) -> ShardStore:
    """Open an activation store written by saev or the reference project (any metadata era)."""
    return ShardStore(path)

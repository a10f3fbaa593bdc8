"""Fast readers over a store: every (image, token) example of one layer, in order or shuffled.

Both modes read large contiguous runs of images (a few MiB each) straight from the shard files
and convert them to float32 in one copy. Shuffled mode visits those runs in a seeded random order
and shuffles examples inside a memory buffer, so no example is read on its own.
"""

import os
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch

from saev import distributed
from saev.data.layout import Run, Tokens, TokenView
from saev.data.statistics import store_normalization
from saev.data.store import ShardStore, nonfinite_rows, open_shards
from saev.errors import StoreError
from saev.normalization import ActNorm

MiB = 1 << 20
T = TypeVar("T")


def iter_batches(
    path: str | os.PathLike | ShardStore,
    layer: int = -2,
    tokens: Tokens = "patches",
    batch_size: int = 16384,
    shuffle: bool = True,
    seed: int | tuple[int, ...] = 0,
    normalize: bool = False,
    *,
    images: range | None = None,
    drop_last: bool = False,
    start_batch: int = 0,
    block_mib: float = 4,
    buffer_mib: float = 256,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield dicts with `act` (float32 [B, d_vit]), `image_i` and `patch_i` (int64 [B]).

    Ordered mode yields every example once in store order. Shuffled mode yields every example
    once per call, in an order fixed by `seed`: runs of about `block_mib` are read in random order,
    `buffer_mib` of them at a time, and their examples shuffled together. `images` restricts the
    reader to a range of image indices (e.g. a held-out split). `normalize` applies the
    reference normalisation with statistics cached beside the store (`saev.data.statistics`).
    """
    store = path if isinstance(path, ShardStore) else open_shards(path)
    if batch_size < 1:
        raise StoreError(f"batch_size must be positive, got {batch_size}.")
    layer_i = store.layer_index(layer)
    view = store.token_view(tokens)
    images = _image_range(store, images)
    norm = store_normalization(store, layer, tokens) if normalize else None
    row_bytes = view.n * store.d_vit * 4
    reader = _Reader(store, layer_i, view, norm)
    skip = start_batch * batch_size
    if shuffle:
        chunks = _shuffled_chunks(reader, images, row_bytes, seed, block_mib, buffer_mib, skip)
    else:
        chunks = _ordered_chunks(reader, images, row_bytes, skip)
    yield from _batches(prefetch(chunks), batch_size, drop_last)


def find_nonfinite(
    path: str | os.PathLike | ShardStore,
    layer: int = -2,
    tokens: Tokens = "all",
    *,
    images: range | None = None,
    limit: int = 10,
) -> list[tuple[int, int]]:
    """(image, token position) of the first `limit` examples that hold a NaN or an infinity, in store
    order. One sequential pass over every selected example: for explaining a non-finite result (see
    `ShardStore.nonfinite_error`), not for every batch."""
    store = path if isinstance(path, ShardStore) else open_shards(path)
    layer_i = store.layer_index(layer)
    view = store.token_view(tokens)
    hits: list[tuple[int, int]] = []
    row_bytes = view.n * store.d_vit * 4
    for run in store.runs(_image_range(store, images), max(1, int(32 * MiB // row_bytes))):
        bad = nonfinite_rows(store.read(run.shard, run.local, layer_i, view.slice))
        hits += [(run.start + int(i), view.start + int(t)) for i, t in bad[: limit - len(hits)]]
        distributed.progress()
        if len(hits) == limit:
            break
    return hits


def _image_range(store: ShardStore, images: range | None) -> range:
    if images is None:
        return range(len(store))
    if images.step != 1 or images.start < 0 or images.stop > len(store):
        raise StoreError(f"images must be a contiguous range within [0, {len(store)}), got {images}.")
    return images


class _Reader:
    """Reads runs of images into float32 example rows with their image and patch indices."""

    def __init__(self, store: ShardStore, layer_i: int, view: TokenView, norm: ActNorm | None):
        self.store, self.layer_i, self.view, self.norm = store, layer_i, view, norm

    def read(self, run: Run, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_imgs, n_tok = run.stop - run.start, self.view.n
        if out is None:
            out = np.empty((n_imgs * n_tok, self.store.d_vit), dtype=np.float32)
        self.store.read(
            run.shard, run.local, self.layer_i, self.view.slice, out=out.reshape(n_imgs, n_tok, -1)
        )
        if self.norm is not None:
            self.norm.apply(torch.from_numpy(out), inplace=True)
        image_i = np.repeat(np.arange(run.start, run.stop, dtype=np.int64), n_tok)
        patch_i = np.tile(self.view.patch_i, n_imgs)
        return out, image_i, patch_i


def _ordered_chunks(reader: _Reader, images: range, row_bytes: int, skip: int):
    rows_per_img = reader.view.n
    first = images.start + skip // rows_per_img
    for run in reader.store.runs(
        range(min(first, images.stop), images.stop), max(1, int(32 * MiB // row_bytes))
    ):
        chunk: tuple[np.ndarray, ...] = reader.read(run)
        if run.start == first and skip % rows_per_img:
            chunk = tuple(a[skip % rows_per_img :] for a in chunk)
        yield chunk


def _shuffled_chunks(
    reader: _Reader, images: range, row_bytes: int, seed, block_mib: float, buffer_mib: float, skip: int
):
    rng = np.random.default_rng(seed)
    imgs_per_block = max(1, int(block_mib * MiB // row_bytes))
    blocks = reader.store.runs(images, imgs_per_block)
    order = rng.permutation(len(blocks))
    blocks_per_group = max(1, int(buffer_mib // block_mib))
    rows_per_img, d = reader.view.n, reader.store.d_vit
    for g in range(0, len(order), blocks_per_group):
        group = [blocks[i] for i in order[g : g + blocks_per_group]]
        n_rows = sum(run.stop - run.start for run in group) * rows_per_img
        if skip >= n_rows:  # already consumed: keep the generator's state, read nothing
            rng.permutation(n_rows)
            skip -= n_rows
            continue
        acts = np.empty((n_rows, d), dtype=np.float32)
        image_i = np.empty(n_rows, dtype=np.int64)
        patch_i = np.empty(n_rows, dtype=np.int64)
        at = 0
        for run in group:
            n = (run.stop - run.start) * rows_per_img
            _, image_i[at : at + n], patch_i[at : at + n] = reader.read(run, out=acts[at : at + n])
            at += n
        perm = rng.permutation(n_rows)[skip:]
        skip = 0
        yield acts[perm], image_i[perm], patch_i[perm]


def _batches(
    chunks: Iterable[tuple[np.ndarray, ...]], batch_size: int, drop_last: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """Cut a stream of row chunks into batches; only batches that straddle two chunks are copied."""
    carry: list[tuple[np.ndarray, ...]] = []
    n_carry = 0
    for chunk in chunks:
        n, at = len(chunk[0]), 0
        if carry:
            take = min(batch_size - n_carry, n)
            carry.append(tuple(a[:take] for a in chunk))
            n_carry += take
            at = take
            if n_carry == batch_size:
                yield _to_batch(tuple(np.concatenate(parts) for parts in zip(*carry, strict=True)))
                carry, n_carry = [], 0
        while n - at >= batch_size:
            yield _to_batch(tuple(a[at : at + batch_size] for a in chunk))
            at += batch_size
        if at < n:
            carry.append(tuple(a[at:] for a in chunk))
            n_carry += n - at
    if carry and not drop_last:
        yield _to_batch(tuple(np.concatenate(parts) for parts in zip(*carry, strict=True)))


def _to_batch(arrays: tuple[np.ndarray, ...]) -> dict[str, torch.Tensor]:
    act, image_i, patch_i = arrays
    return {
        "act": torch.from_numpy(act),
        "image_i": torch.from_numpy(image_i),
        "patch_i": torch.from_numpy(patch_i),
    }


def prefetch(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Produce the next items on a background thread (numpy copies release the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as err:  # surfaced in the consumer
            q.put(err)
        q.put(done)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)

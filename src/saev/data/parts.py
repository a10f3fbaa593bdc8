"""A store recorded by several processes: each records a contiguous range of source images into a part
(a store of its own, with its own resumable state), then the parts become one store whose files are
byte for byte those one process writes.

One process fills shard k with recorded images [k * per_shard, (k + 1) * per_shard), skipped images
taking no room, so where a part's images go depends on how many images the parts before it recorded.
Parts start at multiples of `per_shard` source images, so without skipped images every part's
shards land whole at their final place and are renamed; otherwise their images are copied to their
global position. Shard files are full-size (zero-padded, sparsely) either way, as one process writes
them. The folder holding the parts is removed once the store is finished.
"""

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any

from saev import distributed
from saev.data import metadata as md
from saev.data.writer import PARTS_DIR, Skip
from saev.fileio import write_json

COPY_BYTES = 64 << 20
"""Bytes copied per read when a part's images move to a position that is not a shard boundary."""


def part_root(root: pathlib.Path, images: range) -> pathlib.Path:
    """Where the part recording source images `images` of the store at `root` lives."""
    return root / PARTS_DIR / f"{images.start:012d}-{images.stop:012d}"


def recorded(part: pathlib.Path) -> int:
    """Images a finished part recorded."""
    return md.read(part / "metadata.json").n_imgs


def shard_name(k: int) -> str:
    return f"acts{k:06d}.bin"


def place(root: pathlib.Path, part: pathlib.Path, offset: int, total: int, planned: md.Metadata) -> None:
    """Put a finished part's images at recorded positions `offset`, `offset + 1`, ... of the store.

    Safe to repeat after an interruption: a renamed shard is found at its final place, a copy is redone.
    """
    per, size = planned.n_imgs_per_shard, planned.bytes_per_img
    for j, entry in enumerate(json.loads((part / "shards.json").read_text())):
        first, n = offset + j * per, entry["n_imgs"]
        source = part / entry["name"]
        whole = first % per == 0 and (n == per or first + n == total)
        if whole:
            target = root / shard_name(first // per)
            if source.exists():
                os.replace(source, target)
            continue
        _copy(source, root, first, n, per, size)


def _copy(source: pathlib.Path, root: pathlib.Path, first: int, n: int, per: int, size: int) -> None:
    """Copy `n` images from the start of `source` to recorded positions `first`... across shard files."""
    with source.open("rb") as f:
        done = 0
        while done < n:
            k, pos = divmod(first + done, per)
            count = min(n - done, per - pos, max(1, COPY_BYTES // size))
            data = f.read(count * size)
            fd = os.open(root / shard_name(k), os.O_RDWR | os.O_CREAT, 0o666)
            try:
                os.pwrite(fd, data, pos * size)
                # Full size, as one process writes every shard; a file only grows, so ranks writing
                # their halves of one shard in either order agree.
                if os.fstat(fd).st_size < per * size:
                    os.ftruncate(fd, per * size)
                os.fsync(fd)
            finally:
                os.close(fd)
            done += count
            distributed.progress()


def finish(
    root: pathlib.Path,
    parts: list[pathlib.Path],
    planned: md.Metadata,
    source: dict[str, Any],
    layout,
    options: dict[str, Any],
) -> md.Metadata:
    """Write the store's JSON files from its placed parts (in source order) and remove the parts."""
    images: list[dict[str, Any]] = []
    skips: list[Skip] = []
    for part in parts:
        images += json.loads((part / "images.json").read_text())["images"]
        skips += [Skip(**s) for s in json.loads((part / "skipped.json").read_text())]
        distributed.progress()
    per = planned.n_imgs_per_shard
    shards = [
        {"name": shard_name(k), "n_imgs": min(per, len(images) - k * per)}
        for k in range(-(-len(images) // per))
    ]
    write_json(root / "shards.json", shards)
    write_json(root / "skipped.json", [dataclasses.asdict(s) for s in sorted(skips, key=lambda s: s.index)])
    write_json(root / "images.json", {"source": source, "images": images}, indent=None)
    if layout is not None:
        write_json(root / md.LAYOUT_FILE, layout.to_dict())
    if options:
        write_json(root / md.RECORDING_FILE, options)
    final = dataclasses.replace(planned, n_imgs=len(images))
    write_json(root / "metadata.json", final.to_dict(), indent=4)
    shutil.rmtree(root / PARTS_DIR, ignore_errors=True)
    return final

"""Which rows of a store a reader visits: a token selection of each image, and runs of images that
never cross a shard boundary."""

import dataclasses
from typing import Literal

import numpy as np

from saev.data.metadata import Metadata
from saev.errors import StoreError

Tokens = Literal["patches", "cls", "all"]


@dataclasses.dataclass(frozen=True)
class TokenView:
    """Which token positions of each image a reader yields, and their `patch_i` labels."""

    start: int
    stop: int
    patch_i: np.ndarray
    """[stop - start] int64; -1 for [CLS]."""

    @property
    def n(self) -> int:
        return self.stop - self.start

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)


def token_view(meta: Metadata, tokens: Tokens, where: object = "store") -> TokenView:
    cls = int(meta.cls_token)
    patches = np.arange(meta.n_patches_per_img, dtype=np.int64)
    if tokens == "patches":
        return TokenView(cls, meta.n_tokens, patches)
    if tokens == "cls":
        if not meta.cls_token:
            raise StoreError(f"{where}: tokens='cls' asked, but this store has no [CLS] token.")
        return TokenView(0, 1, np.array([-1], dtype=np.int64))
    if tokens == "all":
        return TokenView(0, meta.n_tokens, np.concatenate([np.full(cls, -1, dtype=np.int64), patches]))
    raise StoreError(f"tokens must be 'patches', 'cls' or 'all', not {tokens!r}.")


@dataclasses.dataclass(frozen=True)
class Shard:
    name: str
    n_imgs: int
    start: int
    """Global index of the shard's first image."""


@dataclasses.dataclass(frozen=True)
class Run:
    """Images [start, stop) of one shard (global indices)."""

    shard: int
    start: int
    stop: int
    offset: int
    """Global index of the shard's first image."""

    @property
    def local(self) -> slice:
        """The run's images as positions in its shard file."""
        return slice(self.start - self.offset, self.stop - self.offset)


def runs(shards: list[Shard], images: range, max_imgs: int) -> list[Run]:
    """Split `images` into runs of at most `max_imgs` images that never cross a shard boundary."""
    out = []
    for k, shard in enumerate(shards):
        lo, hi = max(images.start, shard.start), min(images.stop, shard.start + shard.n_imgs)
        for a in range(lo, hi, max_imgs):
            out.append(Run(k, a, min(a + max_imgs, hi), shard.start))
    return out

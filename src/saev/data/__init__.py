"""The activation store: reading shards written by saev or the reference, and fast batch readers."""

from saev.data.layout import Tokens
from saev.data.metadata import Metadata, PatchLayout
from saev.data.readers import iter_batches
from saev.data.store import ShardStore, open_shards

__all__ = ["Metadata", "PatchLayout", "ShardStore", "Tokens", "iter_batches", "open_shards"]

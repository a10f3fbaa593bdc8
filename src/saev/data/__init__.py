"""The activation store: reading shards written by saev or the reference, and fast batch readers."""

from saev.data.metadata import Metadata
from saev.data.readers import iter_batches
from saev.data.store import ShardStore, open_shards

__all__ = ["Metadata", "ShardStore", "iter_batches", "open_shards"]

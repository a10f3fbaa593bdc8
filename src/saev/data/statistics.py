"""A store's reference normalisation statistics, computed once and cached beside it.

The reference samples 2**19 examples with `numpy.random.default_rng(42).permutation(n)` over the
image-major example index (image i, token t) -> i * n_tokens + t, then takes the mean and the mean
L2 distance to it over sqrt(d_vit). Here the sampled examples are gathered in one ordered pass.
"""

import logging
import math
import pathlib

import numpy as np
import torch
from jaxtyping import Float

from saev import distributed
from saev.data.layout import Tokens
from saev.data.store import ShardStore, nonfinite_rows
from saev.errors import StoreError
from saev.fileio import existing_kind, read_json, write_json
from saev.normalization import DEFAULT_CLAMP, ActNorm, estimate_normalization

logger = logging.getLogger("saev.data")
N_SAMPLES = 2**19
SEED = 42


def reference_sample(n_examples: int, n_samples: int = N_SAMPLES) -> np.ndarray:
    """Sorted indices of the examples the reference uses for its statistics."""
    return np.sort(np.random.default_rng(SEED).permutation(n_examples)[:n_samples])


def sample_examples(
    store: ShardStore, layer: int, tokens: Tokens, n_samples: int = N_SAMPLES
) -> Float[torch.Tensor, "n d_vit"]:
    """The reference's sample of a store's examples, float32 [n, d_vit], read in one sequential pass.
    A NaN or infinite value in the sample is a StoreError naming its image and token."""
    layer_i = store.layer_index(layer)
    view = store.token_view(tokens)
    wanted = reference_sample(len(store) * view.n, n_samples)
    out = np.empty((len(wanted), store.d_vit), dtype=np.float32)
    filled = 0
    for run in store.runs(range(len(store)), max_imgs=256):
        lo, hi = np.searchsorted(wanted, [run.start * view.n, run.stop * view.n])
        if lo == hi:
            continue
        local = wanted[lo:hi] - run.start * view.n
        imgs = local // view.n + run.local.start
        toks = local % view.n + view.start
        block = store.read(run.shard, imgs, layer_i, toks, out=out[filled : filled + len(local)])
        bad = nonfinite_rows(block)
        if len(bad):
            row = int(bad[0, 0])
            image_i = run.start + int(local[row]) // view.n
            raise store.nonfinite_error(
                image_i, int(toks[row]), layer, block[row], "computing normalisation statistics"
            )
        filled += len(local)
        distributed.progress()
    return torch.from_numpy(out)


def cache_path(store: ShardStore, layer: int, tokens: Tokens) -> pathlib.Path:
    return store.path / f"normalization_layer{store.layer_label(layer)}_{tokens}.json"


def store_normalization(store: ShardStore, layer: int, tokens: Tokens) -> ActNorm:
    """Statistics for (layer, tokens), read from the cache beside the store or computed and cached.
    A cache written for other contents of the store (its `fingerprint`) is recomputed."""
    path = cache_path(store, layer, tokens)
    cached = _read_cache(path, store)
    if cached is not None:
        return cached
    logger.info("computing normalisation statistics for layer %d (%s) of %s", layer, tokens, store.path)
    norm = estimate_normalization(sample_examples(store, layer, tokens), clamp=DEFAULT_CLAMP)
    if not norm.scale > 0:
        # Every sampled activation is the same vector: normalising would divide by zero.
        raise StoreError(
            f"{store.path}: the activations of layer {layer} ({tokens}) are all equal (no spread), so they "
            "cannot be normalised; record the store again from varied images."
        )
    record = {
        "mean": norm.mean.tolist(),
        "scale": norm.scale,
        "clamp": norm.clamp,
        "n_samples": min(N_SAMPLES, len(store) * store.token_view(tokens).n),
        "store": store.fingerprint,
    }
    try:
        write_json(path, record, indent=None)
    except OSError as err:
        logger.warning(
            "could not cache normalisation statistics at %s (%s); they will be recomputed next time",
            path,
            err,
        )
    return norm


def _read_cache(path: pathlib.Path, store: ShardStore) -> ActNorm | None:
    """The cached statistics, or None when there are none or they cannot be trusted: written for
    other contents of the store, not finite (older saev cached NaN), or unreadable."""
    if existing_kind(path) != "a file":
        return None
    try:
        dct = read_json(path, "statistics cache", StoreError)
        norm = ActNorm(
            torch.tensor(dct["mean"], dtype=torch.float32), float(dct["scale"]), float(dct["clamp"])
        )
        fresh = dct.get("store") == store.fingerprint and norm.mean.shape == (store.d_vit,)
    except (StoreError, ValueError, TypeError, KeyError, AttributeError):
        fresh = False
    if fresh and torch.isfinite(norm.mean).all() and math.isfinite(norm.scale):
        return norm
    logger.info("recomputing %s: it was written for other contents of the store, or is not finite", path)
    return None

"""A store's reference normalisation statistics, computed once and cached beside it.

The reference samples 2**19 examples with `numpy.random.default_rng(42).permutation(n)` over the
image-major example index (image i, token t) -> i * n_tokens + t, then takes the mean and the mean
L2 distance to it over sqrt(d_vit). Here the sampled examples are gathered in one ordered pass.
"""

import json
import logging
import pathlib

import numpy as np
import torch
from jaxtyping import Float

from saev.data.layout import Tokens
from saev.data.store import ShardStore
from saev.fileio import write_json
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
    """The reference's sample of a store's examples, float32 [n, d_vit], read in one sequential pass."""
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
        store.read(run.shard, imgs, layer_i, toks, out=out[filled : filled + len(local)])
        filled += len(local)
    return torch.from_numpy(out)


def cache_path(store: ShardStore, layer: int, tokens: Tokens) -> pathlib.Path:
    return store.path / f"normalization_layer{store.layer_label(layer)}_{tokens}.json"


def store_normalization(store: ShardStore, layer: int, tokens: Tokens) -> ActNorm:
    """Statistics for (layer, tokens), read from the cache beside the store or computed and cached."""
    path = cache_path(store, layer, tokens)
    if path.exists():
        dct = json.loads(path.read_text())
        return ActNorm(torch.tensor(dct["mean"], dtype=torch.float32), dct["scale"], dct["clamp"])
    logger.info("computing normalisation statistics for layer %d (%s) of %s", layer, tokens, store.path)
    norm = estimate_normalization(sample_examples(store, layer, tokens), clamp=DEFAULT_CLAMP)
    record = {
        "mean": norm.mean.tolist(),
        "scale": norm.scale,
        "clamp": norm.clamp,
        "n_samples": min(N_SAMPLES, len(store) * store.token_view(tokens).n),
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

"""Reference activation-normalisation statistics of a store, computed once and cached beside it.

The reference samples 2**19 examples with `numpy.random.default_rng(42).permutation(n)` over the
image-major example index (image i, token t) -> i * n_tokens + t, then takes the mean and the mean
L2 distance to it over sqrt(d_vit). Here the sampled examples are gathered in one ordered pass.
"""

import dataclasses
import json
import logging
import pathlib

import numpy as np
import torch

from saev.data.readers import Tokens, runs, token_view
from saev.data.store import ShardStore, to_float32
from saev.nn.modeling import DEFAULT_CLAMP, ActNorm, estimate_normalization

logger = logging.getLogger("saev.data")
N_SAMPLES = 2**19
SEED = 42


def reference_sample(n_examples: int, n_samples: int = N_SAMPLES) -> np.ndarray:
    """Sorted indices of the examples the reference uses for its statistics."""
    return np.sort(np.random.default_rng(SEED).permutation(n_examples)[:n_samples])


def sample_examples(
    store: ShardStore, layer: int, tokens: Tokens, n_samples: int = N_SAMPLES
) -> torch.Tensor:
    """The reference's sample of a store's examples, float32 [n, d_vit], read in one sequential pass."""
    layer_i = store.meta.layer_index(layer)
    view = token_view(store, tokens)
    wanted = reference_sample(len(store) * view.n, n_samples)
    out = np.empty((len(wanted), store.d_vit), dtype=np.float32)
    filled = 0
    for run in runs(store, range(len(store)), max_imgs=256):
        lo, hi = np.searchsorted(wanted, [run.start * view.n, run.stop * view.n])
        if lo == hi:
            continue
        local = wanted[lo:hi] - run.start * view.n
        shard = store.shards[run.shard]
        imgs = local // view.n + (run.start - shard.start)
        toks = local % view.n + view.start
        out[filled : filled + len(local)] = to_float32(
            store.raw(run.shard)[imgs, layer_i, toks], store.meta.dtype
        )
        filled += len(local)
    return torch.from_numpy(out)


def cache_path(store: ShardStore, layer: int, tokens: Tokens) -> pathlib.Path:
    return store.path / f"normalization_layer{layer}_{tokens}.json"


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
        "n_samples": min(N_SAMPLES, len(store) * token_view(store, tokens).n),
    }
    try:
        from saev.fileio import write_json

        write_json(path, record, indent=None)
    except OSError as err:
        logger.warning(
            "could not cache normalisation statistics at %s (%s); they will be recomputed next time",
            path,
            err,
        )
    return norm


@dataclasses.dataclass(frozen=True)
class NormalizeConfig:
    """Attach a store's reference normalisation statistics to a (legacy) SAE and save it natively."""

    sae: str
    """SAE checkpoint to complete: a path, hf://ORG/NAME or hf://ORG/NAME/FILE."""
    shards: pathlib.Path
    """Activation store recorded from the SAE's ViT and layer, on images like its training set."""
    out: pathlib.Path
    """Where to write the SAE with its statistics (.safetensors)."""
    layer: int = -2
    """Layer of the store the SAE reads."""
    tokens: Tokens = "patches"
    """Token selection the SAE was trained on."""


def normalize_checkpoint(cfg: NormalizeConfig) -> pathlib.Path:
    import saev.nn
    from saev.data.store import open_shards
    from saev.errors import ConfigError

    if cfg.out.suffix != ".safetensors":
        raise ConfigError(f"--out {cfg.out}: statistics are only kept by the native .safetensors format.")
    sae = saev.nn.load(cfg.sae)
    store = open_shards(cfg.shards)
    if store.d_vit != sae.cfg.d_vit:
        raise ConfigError(
            f"{cfg.sae} reads {sae.cfg.d_vit}-dim activations; {store.path} holds {store.d_vit}-dim ones."
        )
    sae.set_normalization(store_normalization(store, cfg.layer, cfg.tokens))
    sae.provenance = dataclasses.replace(
        sae.provenance,
        vit_family=store.meta.vit_family,
        vit_ckpt=store.meta.vit_ckpt,
        layer=cfg.layer,
        tokens=cfg.tokens,
        n_patches_per_img=store.meta.n_patches_per_img,
    )
    saev.nn.dump(cfg.out, sae)
    return cfg.out

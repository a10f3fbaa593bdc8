"""`saev normalize`: attach a store's reference normalisation statistics to a (legacy) SAE."""

import dataclasses
import pathlib
import typing

from saev.activations import provenance
from saev.commands.base import Command
from saev.data.layout import Tokens
from saev.data.statistics import store_normalization
from saev.data.store import open_shards
from saev.errors import ConfigError
from saev.fileio import OutputFile
from saev.nn import checkpoints


@dataclasses.dataclass(frozen=True)
class Config:
    """Attach a store's reference normalisation statistics to a (legacy) SAE and save it natively."""

    sae: str
    """SAE checkpoint to complete: a path, hf://ORG/NAME or hf://ORG/NAME/FILE."""
    shards: pathlib.Path
    """Activation store recorded from the SAE's ViT and layer, on images like its training set."""
    out: OutputFile
    """Where to write the SAE with its statistics (.safetensors)."""
    layer: int | None = None
    """Layer of the store the SAE reads (default: the one it records, else the store's only layer)."""
    tokens: Tokens | None = None
    """Token selection the SAE was trained on (default: the one it records, else patches)."""
    force: bool = False
    """Take statistics from a layer, model or token selection other than the SAE records."""


def run(cfg: Config) -> pathlib.Path:
    if cfg.out.suffix != ".safetensors":
        raise ConfigError(f"--out {cfg.out}: statistics are only kept by the native .safetensors format.")
    sae = checkpoints.load(cfg.sae)
    store = open_shards(cfg.shards)
    if store.d_vit != sae.cfg.d_vit:
        raise ConfigError(
            f"{cfg.sae} reads {sae.cfg.d_vit}-dim activations; {store.path} holds {store.d_vit}-dim ones."
        )
    layer = cfg.layer if cfg.layer is not None else provenance.default_layer(sae.provenance, store, cfg.sae)
    # A checkpoint's string, not checked on load: token_view refuses any other value.
    recorded = typing.cast(Tokens | None, sae.provenance.tokens)
    tokens: Tokens = cfg.tokens or recorded or "patches"
    reading = provenance.store_reading(store, layer, tokens)
    provenance.check(sae.provenance, reading, force=cfg.force, where=cfg.sae)
    sae.set_normalization(store_normalization(store, layer, tokens))
    sae.provenance = dataclasses.replace(
        sae.provenance,
        vit_family=store.meta.vit_family,
        vit_ckpt=store.meta.vit_ckpt,
        layer=layer,
        tokens=tokens,
        n_patches_per_img=store.meta.n_patches_per_img,
    )
    checkpoints.dump(cfg.out, sae)
    return cfg.out


COMMAND = Command(Config, run, print)

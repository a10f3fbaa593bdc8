"""Whether an SAE was trained on the activations it is about to read: the same ViT, the same block and
the same token selection. Latents read from another layer or model are silent garbage (every number
comes out finite and plausible), so a mismatch is refused unless the user forces it."""

import dataclasses
import logging

from saev.data.layout import Tokens
from saev.data.store import ShardStore
from saev.errors import ConfigError, StoreError
from saev.nn.config import Provenance

logger = logging.getLogger("saev.provenance")


@dataclasses.dataclass(frozen=True)
class Reading:
    """What a command is about to feed the SAE."""

    vit_family: str
    vit_ckpt: str
    layer: int | None = None
    """The block, as the command names it (either sign); None: not compared (not chosen yet)."""
    n_blocks: int | None = None
    """The model's depth, to compare a layer counted from either end; None when unknown."""
    tokens: Tokens | None = None
    """None: not compared."""


def mismatches(prov: Provenance, reading: Reading) -> list[str]:
    """How `reading` differs from what the SAE was trained on, one phrase per difference; facts the SAE
    does not record are not compared."""
    out = []
    trained = (prov.vit_family or reading.vit_family, prov.vit_ckpt or reading.vit_ckpt)
    if trained != (reading.vit_family, reading.vit_ckpt):
        out.append(f"it was trained on {'/'.join(trained)}, not {reading.vit_family}/{reading.vit_ckpt}")
    if (
        prov.layer is not None
        and reading.layer is not None
        and not same_block(prov.layer, reading.layer, reading.n_blocks)
    ):
        depth = f" of {reading.n_blocks}" if reading.n_blocks is not None else ""
        out.append(f"it was trained on block {prov.layer}, not block {reading.layer}{depth}")
    if None not in (prov.tokens, reading.tokens) and prov.tokens != "all" and prov.tokens != reading.tokens:
        out.append(f"it was trained on {prov.tokens} tokens, not {reading.tokens} tokens")
    return out


def same_block(a: int, b: int, n_blocks: int | None) -> bool:
    """Whether layers `a` and `b` name one block; with the depth unknown, only equal numbers do."""
    if n_blocks is None:
        return a == b
    return -n_blocks <= a < n_blocks and -n_blocks <= b < n_blocks and a % n_blocks == b % n_blocks


def check(prov: Provenance, reading: Reading, *, force: bool, where: str = "the SAE") -> None:
    """Refuse (ConfigError) to read `reading` with the SAE at `where` when they differ, unless `force`."""
    found = mismatches(prov, reading)
    if found and not force:
        raise ConfigError(
            f"{where}: {'; '.join(found)}. Its latents mean nothing on these activations "
            "(--force to do it anyway, e.g. for the same model under another name)."
        )


def store_reading(store: ShardStore, layer: int, tokens: Tokens) -> Reading:
    """What reading `layer` and `tokens` of `store` feeds an SAE."""
    meta = store.meta
    return Reading(meta.vit_family, meta.vit_ckpt, store.layer_label(layer), store.n_blocks, tokens)


def default_layer(prov: Provenance, store: ShardStore, where: str) -> int:
    """The layer to read from `store` when none is given: the SAE's own; for an SAE that does not
    record it, the store's only layer, else -2 (the reference's default) with a warning."""
    if prov.layer is not None:
        return prov.layer
    if len(store.meta.layers) == 1:
        return store.meta.layers[0]
    try:
        store.layer_label(-2)
    except StoreError:
        raise ConfigError(
            f"{where} does not record the layer it reads and {store.path} holds layers "
            f"{list(store.meta.layers)}; give --layer."
        ) from None
    logger.warning(
        "%s does not record the layer it reads; reading layer -2 of %s (give --layer to choose)",
        where,
        store.path,
    )
    return -2


def patch_layer(prov: Provenance, store: ShardStore, where: str, force: bool) -> int:
    """The store layer whose patch tokens the SAE at `where` reads: the one it records, checked like
    every command that reads a store."""
    layer = default_layer(prov, store, where)
    reading = Reading(store.meta.vit_family, store.meta.vit_ckpt, layer, store.n_blocks, "patches")
    check(prov, reading, force=force, where=where)
    found = [ly for ly in store.layers if same_block(ly, layer, store.n_blocks)]
    if not found:
        raise ConfigError(
            f"{store.path} records layers {list(store.layers)}, not layer {layer} that {where} reads."
        )
    return found[0]

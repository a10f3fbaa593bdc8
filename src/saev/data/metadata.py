"""Store metadata: the reference protocol's `metadata.json` in every naming era, and the shard layout it implies."""

import dataclasses
import hashlib
import json
import math
import pathlib
import reprlib
from typing import Any

from saev.errors import StoreError
from saev.fileio import existing_kind, read_json

PROTOCOL = "1.0.0"
DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclasses.dataclass(frozen=True)
class Metadata:
    """What a store holds. Written with the reference protocol 1.0.0 key names."""

    vit_family: str
    vit_ckpt: str
    layers: tuple[int, ...]
    """Recorded blocks, in the order of the file's layer axis (ascending block order)."""
    n_patches_per_img: int
    cls_token: bool
    d_vit: int
    n_imgs: int
    max_patches_per_shard: int
    data: Any
    """Description of the image source."""
    dtype: str = "float32"
    protocol: str = PROTOCOL

    def __post_init__(self):
        if (
            min(self.d_vit, self.n_tokens, len(self.layers)) < 1
            or min(self.n_patches_per_img, self.n_imgs) < 0
        ):
            raise StoreError(
                f"d_vit={self.d_vit}, tokens per image ({self.n_tokens}) and layers ({len(self.layers)}) "
                f"must be positive, n_patches_per_img={self.n_patches_per_img} and n_imgs={self.n_imgs} "
                "not negative."
            )
        if len(set(self.layers)) != len(self.layers):
            raise StoreError(
                f"layers {list(self.layers)} name a layer twice; each is one slice of the shards."
            )
        if self.dtype not in DTYPES:
            raise StoreError(f"unsupported store dtype {self.dtype!r}; saev reads {sorted(DTYPES)}.")
        if self.n_imgs_per_shard < 1:
            raise StoreError(
                f"max_patches_per_shard={self.max_patches_per_shard} cannot hold one image "
                f"({len(self.layers)} layers x {self.n_tokens} tokens)."
            )

    def describe_data(self) -> str | None:
        """The image source as one string (it is a string or a JSON object), or None if unrecorded."""
        if not self.data:
            return None
        return self.data if isinstance(self.data, str) else json.dumps(self.data, sort_keys=True)

    @property
    def n_tokens(self) -> int:
        return self.n_patches_per_img + int(self.cls_token)

    @property
    def n_imgs_per_shard(self) -> int:
        return self.max_patches_per_shard // len(self.layers) // self.n_tokens

    @property
    def bytes_per_img(self) -> int:
        return len(self.layers) * self.n_tokens * self.d_vit * DTYPES[self.dtype]

    @property
    def shard_shape(self) -> tuple[int, int, int, int]:
        return (self.n_imgs_per_shard, len(self.layers), self.n_tokens, self.d_vit)

    def to_dict(self) -> dict[str, Any]:
        dct = dataclasses.asdict(self)
        dct["layers"] = list(self.layers)
        return dct

    @property
    def hash(self) -> str:
        """Directory name: sha256 of the compact, key-sorted JSON (protocol 1.0.0)."""
        return dict_hash(self.to_dict())


def dict_hash(dct: dict[str, Any], compact: bool = True) -> str:
    """A store's directory name for its metadata.json: sha256 of the key-sorted JSON, with compact
    separators (protocol 1.0.0) or json's defaults (older reference stores)."""
    separators = (",", ":") if compact else None
    return hashlib.sha256(json.dumps(dct, sort_keys=True, separators=separators).encode("utf-8")).hexdigest()


def parse(dct: dict[str, Any], source: str = "metadata.json") -> Metadata:
    """Read metadata from any era: vit_*, model_family/model_ckpt, model_org/model_ckpt; either shard budget name."""
    family = dct.get("vit_family", dct.get("model_family", dct.get("model_org")))
    ckpt = dct.get("vit_ckpt", dct.get("model_ckpt"))
    budget = dct.get("max_patches_per_shard", dct.get("n_patches_per_shard"))
    missing = [
        name
        for name, value in (("vit_family", family), ("vit_ckpt", ckpt), ("max_patches_per_shard", budget))
        if value is None
    ]
    missing += [k for k in ("layers", "n_patches_per_img", "cls_token", "d_vit", "n_imgs") if k not in dct]
    if missing:
        raise StoreError(f"{source}: missing keys {missing}.")
    if not isinstance(dct["layers"], list):
        raise StoreError(
            f"{source}: 'layers' must be a list of block indices, got {reprlib.repr(dct['layers'])}."
        )
    try:
        return Metadata(
            vit_family=str(family),
            vit_ckpt=str(ckpt),
            layers=tuple(whole(layer, f"{source}: 'layers'") for layer in dct["layers"]),
            n_patches_per_img=whole(dct["n_patches_per_img"], f"{source}: 'n_patches_per_img'"),
            cls_token=bool(dct["cls_token"]),
            d_vit=whole(dct["d_vit"], f"{source}: 'd_vit'"),
            n_imgs=whole(dct["n_imgs"], f"{source}: 'n_imgs'"),
            max_patches_per_shard=whole(budget, f"{source}: 'max_patches_per_shard'"),
            data=dct.get("data", ""),
            dtype=str(dct.get("dtype", "float32")),
            protocol=str(dct.get("protocol", "0")),
        )
    except StoreError as err:
        raise StoreError(err if str(err).startswith(source) else f"{source}: {err}") from None


def whole(value: Any, what: str) -> int:
    """`value` as an int: a JSON integer, or a float with no fraction (older writers); a StoreError
    naming `what` otherwise (a string, a bool, NaN, infinity, a fraction)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StoreError(f"{what} must be an integer, got {reprlib.repr(value)}.")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise StoreError(f"{what} must be an integer, got {value}.")
    return int(value)


def read(path: pathlib.Path) -> Metadata:
    if existing_kind(path) is None:
        raise StoreError(f"{path.parent}: not an activation store (no metadata.json).")
    dct = read_json(path, "store metadata", StoreError)
    if not isinstance(dct, dict):
        raise StoreError(f"{path}: expected a JSON object.")
    return parse(dct, str(path))


RECORDING_FILE = "recording.json"
"""saev's own addition to a store: the recording options that change the stored values but are not in
metadata.json (so not in the store's name), such as --autocast. A resume or a rerun with other values
would mix two kinds of activations in one store; `check_recording` refuses it."""


def check_recording(root: pathlib.Path, recorded: dict[str, Any] | None, given: dict[str, Any]) -> None:
    """Refuse to add to (or reuse) the store at `root`, recorded with options `recorded`, with the
    options `given` when any differs. Stores recorded before saev kept these (`recorded` None) pass."""
    if recorded is None:
        return
    changed = [k for k in given if k in recorded and recorded[k] != given[k]]
    if changed:
        was = ", ".join(f"--{k.replace('_', '-')} {recorded[k]}" for k in changed)
        now = ", ".join(f"--{k.replace('_', '-')} {given[k]}" for k in changed)
        raise StoreError(
            f"{root}: was recorded with {was}, but this run says {now}, which changes the stored values: "
            f"rerun with {was} to resume or reuse it, or record into another --dump-to (or remove {root})."
        )


def read_recording(root: pathlib.Path) -> dict[str, Any] | None:
    """The options in a store's RECORDING_FILE, None when it has none."""
    path = root / RECORDING_FILE
    if existing_kind(path) is None:
        return None
    dct = read_json(path, "recording record", StoreError)
    if not isinstance(dct, dict):
        raise StoreError(f"{path}: expected a JSON object.")
    return dct


LAYOUT_FILE = "layout.json"
"""saev's own addition to a store: where the recorded patches sit in the image. Kept out of
metadata.json so that file (and the store's directory hash) stays exactly the reference protocol."""


@dataclasses.dataclass(frozen=True)
class PatchLayout:
    """How a store's patch tokens map onto the image."""

    grid: tuple[int, int]
    """Patch rows and columns; patches are stored in row-major order."""
    n_registers: int = 0
    """Register tokens the model has (never stored: recordings keep [CLS] and patches only)."""
    n_blocks: int | None = None
    """The model's depth, so a layer can be named from either end (2 and -2 of 4 blocks)."""

    def to_dict(self) -> dict[str, Any]:
        dct = {"grid": list(self.grid), "n_registers": self.n_registers, "patch_order": "row-major"}
        return dct if self.n_blocks is None else dct | {"n_blocks": self.n_blocks}


def read_layout(path: pathlib.Path, meta: Metadata) -> PatchLayout:
    dct = read_json(path, "patch layout", StoreError)
    grid = dct.get("grid") if isinstance(dct, dict) else None
    if not isinstance(grid, list) or len(grid) != 2:
        raise StoreError(f"{path}: expected {{'grid': [rows, columns], 'n_registers': n}}.")
    rows, cols = (whole(n, f"{path}: 'grid'") for n in grid)
    n_registers = whole(dct.get("n_registers", 0), f"{path}: 'n_registers'")
    n_blocks = dct.get("n_blocks")
    n_blocks = None if n_blocks is None else whole(n_blocks, f"{path}: 'n_blocks'")
    if min(rows, cols, 1 if n_blocks is None else n_blocks) < 1 or n_registers < 0:
        raise StoreError(
            f"{path}: grid {rows}x{cols}, {n_blocks} blocks and {n_registers} registers: the grid and the "
            "number of blocks must be positive, the registers not negative."
        )
    layout = PatchLayout((rows, cols), n_registers, n_blocks)
    if rows * cols != meta.n_patches_per_img:
        raise StoreError(
            f"{path}: grid {rows}x{cols} has {rows * cols} patches, but metadata.json says "
            f"n_patches_per_img={meta.n_patches_per_img}."
        )
    return layout

"""saev's native format: safetensors with the configuration, forward variant, normalisation statistics,
provenance and a CRC-32 of the tensor data in its metadata."""

import json
import pathlib
import reprlib
import struct
import zlib

import torch
from safetensors.torch import save as st_save

import saev
from saev.errors import CheckpointError, ConfigError
from saev.fileio import atomic_open, canonical_safetensors
from saev.nn import config
from saev.nn.formats import checks
from saev.nn.modeling import SparseAutoencoder
from saev.normalization import DEFAULT_CLAMP, ActNorm

NATIVE_FORMAT = "saev-sae"


NATIVE_VERSION = "1"


SAFETENSORS_MAX_HEADER = 100_000_000
"""safetensors' own limit on the length of its JSON header."""


CHECKSUM_KEY = "data_crc32"
"""Native metadata entry: CRC-32 of the tensor data (everything after the header), as 8 hex digits."""


def looks_like_safetensors(blob: bytes) -> bool:
    if len(blob) < 9:
        return False
    # A reference header is JSON from byte 0, so its first 8 bytes read as an absurd header length.
    (n,) = struct.unpack("<Q", blob[:8])
    return 0 < n <= SAFETENSORS_MAX_HEADER and blob[8:9] == b"{"


def is_native(path: pathlib.Path) -> bool:
    """Whether a safetensors file's metadata names saev's format (reads only the header)."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = f.read(min(n, SAFETENSORS_MAX_HEADER))
    try:
        meta = json.loads(header).get("__metadata__") or {}
    except (ValueError, AttributeError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("format") == NATIVE_FORMAT


def read(path: pathlib.Path, allow_nonfinite: bool) -> SparseAutoencoder:
    blob = checks.read_regular_file(path)
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise CheckpointError(
            f"{path}: truncated: the safetensors header declares {n} bytes, but the file has {len(blob)}."
        )
    # safetensors checks the structure first: offsets within the file, metadata values all strings.
    tensors = checks.parse_safetensors(path, blob)
    header = checks.parse_json(path, blob[8 : 8 + n], "safetensors header")
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != NATIVE_FORMAT:
        raise CheckpointError(
            f"{path}: a safetensors file, but not a saev SAE (metadata lacks format={NATIVE_FORMAT!r}). "
            "SAELens and sparsify SAEs are folders: pass the folder that holds their cfg.json."
        )
    if meta.get("format_version") != NATIVE_VERSION:
        raise CheckpointError(
            f"{path}: saev format version {reprlib.repr(meta.get('format_version'))}; "
            f"this saev reads version {NATIVE_VERSION!r} (written by a newer saev?)."
        )
    cfg, prov, clamp = _native_config(path, meta)
    _verify_checksum(path, meta, memoryview(blob)[8 + n :])
    act_state = {
        k.removeprefix("activation."): tensors.pop(k) for k in list(tensors) if k.startswith("activation.")
    }
    norm: dict[str, torch.Tensor] = {k: tensors.pop(k) for k in ("act_mean", "act_scale") if k in tensors}
    checks.check_weights(path, cfg, tensors, allow_nonfinite)
    if norm:
        checks.check_normalization(path, cfg, norm, allow_nonfinite)
    sae = SparseAutoencoder(cfg, prov, init=False)
    checks.copy_weights(sae, tensors)
    checks.load_activation_state(path, sae, act_state, allow_nonfinite)
    if norm:
        sae.set_normalization(ActNorm(norm["act_mean"], float(norm["act_scale"]), clamp))
    return sae


def _native_config(path: pathlib.Path, meta: dict) -> tuple[config.SaeConfig, config.Provenance, float]:
    """The config, provenance and normalisation clamp from native metadata, every value type-checked."""
    if "config" not in meta:
        raise CheckpointError(f"{path}: invalid saev metadata: no 'config' entry.")
    norm_meta = checks.parse_json(path, meta.get("normalization", "null"), "metadata 'normalization'") or {}
    if not isinstance(norm_meta, dict):
        raise CheckpointError(f"{path}: invalid saev metadata: 'normalization' is not an object.")
    try:
        cfg = config.SaeConfig.from_dict(checks.parse_json(path, meta["config"], "metadata 'config'"))
        prov = config.Provenance.from_dict(
            checks.parse_json(path, meta.get("provenance", "{}"), "metadata 'provenance'")
        )
        clamp = config.checked("normalization field 'clamp'", norm_meta.get("clamp", DEFAULT_CLAMP), float)
    except ConfigError as err:
        raise CheckpointError(f"{path}: invalid saev metadata: {err}") from None
    if clamp <= 0:
        raise CheckpointError(
            f"{path}: invalid saev metadata: normalization field 'clamp' must be positive, got {clamp!r}."
        )
    forward = "x - b_dec" if cfg.subtract_b_dec else "x"
    if meta.get("forward", forward) != forward:
        raise CheckpointError(
            f"{path}: invalid saev metadata: 'forward' is {reprlib.repr(meta['forward'])} but the config's "
            f"subtract_b_dec={cfg.subtract_b_dec} means {forward!r}."
        )
    return cfg, prov, float(clamp)


def _verify_checksum(path: pathlib.Path, meta: dict, data: memoryview) -> None:
    """Compare the tensor data with the CRC-32 recorded at save time (files from before it have none)."""
    if CHECKSUM_KEY not in meta:
        return
    actual = f"{zlib.crc32(data):08x}"
    if meta[CHECKSUM_KEY] != actual:
        raise CheckpointError(
            f"{path}: tensor data is corrupt: its CRC-32 is {actual}, but "
            f"{reprlib.repr(meta[CHECKSUM_KEY])} was recorded when the file was written (damaged copy or disk?)."
        )


def dump(path: pathlib.Path, sae: SparseAutoencoder) -> None:
    tensors = {name: getattr(sae, name).detach() for name in checks.WEIGHT_NAMES}
    tensors |= {f"activation.{k}": v.detach() for k, v in sae.activation.state_dict().items()}
    meta = {
        "format": NATIVE_FORMAT,
        "format_version": NATIVE_VERSION,
        "config": json.dumps(sae.cfg.to_dict()),
        "forward": "x - b_dec" if sae.cfg.subtract_b_dec else "x",
        "provenance": json.dumps(sae.provenance.to_dict()),
        "lib": f"saev {saev.__version__}",
    }
    if (norm := sae.normalization) is not None:
        tensors["act_mean"] = norm.mean.detach()
        tensors["act_scale"] = torch.tensor(norm.scale, dtype=torch.float32)
        meta["normalization"] = json.dumps(
            {"formula": "(clamp(x, -clamp, clamp) - act_mean) / act_scale", "clamp": norm.clamp}
        )
    payload = st_save({k: v.cpu().contiguous() for k, v in tensors.items()}, metadata=meta)
    with atomic_open(path) as f:
        f.write(canonical_safetensors(payload, CHECKSUM_KEY))

"""Read and write SAE checkpoints: every reference `sae.pt` header variant and the native safetensors format.

Reference files are one JSON header line followed by a `torch.save` zip archive of the four
weight tensors; they are read with `torch.load(weights_only=True)`, which refuses pickled code.
Native files are safetensors with the configuration, forward variant, normalisation statistics,
provenance and a CRC-32 of the tensor data in the metadata. See docs in README.md ("Checkpoint formats").

Files come from the internet and from disks, so loading trusts nothing in them: only regular files
are opened, archives and tensor data are checked against their CRC-32s, every header value is
type-checked, and the shapes a header implies are compared with the tensors before a model is built.
"""

import io
import json
import math
import os
import pathlib
import pickle
import reprlib
import stat
import struct
import warnings
import zipfile
import zlib
from typing import Any

import huggingface_hub
import torch
from huggingface_hub import errors as hf_errors
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

import saev
from saev.errors import CheckpointError, ConfigError
from saev.fileio import atomic_open
from saev.nn import config
from saev.nn.architectures import Activation
from saev.nn.architectures.relu import Relu
from saev.nn.architectures.topk import TopK
from saev.nn.modeling import SparseAutoencoder
from saev.normalization import DEFAULT_CLAMP, ActNorm

NATIVE_FORMAT = "saev-sae"
NATIVE_VERSION = "1"
WEIGHT_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
MAX_HEADER_BYTES = 1 << 20
SAFETENSORS_MAX_HEADER = 100_000_000
"""safetensors' own limit on the length of its JSON header."""
MAX_EXP_FACTOR = 1 << 16
"""Largest `exp_factor` a reference header may give (the public SAEs use 32): beyond it, a damaged header."""
CHECKSUM_KEY = "data_crc32"
"""Native metadata entry: CRC-32 of the tensor data (everything after the header), as 8 hex digits."""
HF_PREFIX = "hf://"


def load(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, allow_nonfinite: bool = False
) -> SparseAutoencoder:
    """Load an SAE from a local path, `hf://ORG/NAME` (file `sae.pt`) or `hf://ORG/NAME/FILE`.

    Every header value is checked, and the shapes it implies are compared with the tensors in the
    file, before a model is built. NaN or infinite tensors and a normalisation scale that is not
    positive are refused unless `allow_nonfinite` (to inspect a diverged run).
    """
    local = resolve(str(path))
    blob = _read_bytes(local)
    if _looks_like_safetensors(blob):
        sae = _load_native(local, blob, allow_nonfinite)
    else:
        sae = _load_reference(local, blob, allow_nonfinite)
    return sae.to(device)


def dump(path: str | os.PathLike, sae: SparseAutoencoder) -> None:
    """Write `sae` atomically: `.safetensors` in the native format, `.pt` in the reference V1/V2 form."""
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        _dump_native(path, sae)
    elif path.suffix == ".pt":
        _dump_reference(path, sae)
    else:
        raise CheckpointError(f"{path}: unknown checkpoint suffix {path.suffix!r}; use .safetensors or .pt.")


def resolve(path: str) -> pathlib.Path:
    """Map `hf://ORG/NAME[/FILE]` to a file in the Hugging Face cache (downloading if allowed)."""
    if not path.startswith(HF_PREFIX):
        return pathlib.Path(path).expanduser()
    parts = path[len(HF_PREFIX) :].strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise CheckpointError(f"{path}: expected hf://ORG/NAME or hf://ORG/NAME/FILE.")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:]) or "sae.pt"
    try:
        return pathlib.Path(huggingface_hub.hf_hub_download(repo_id, filename))
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as err:
        raise CheckpointError(
            f"{path}: not in the Hugging Face cache and cannot be downloaded now ({err}). "
            "Download it once with network access; afterwards it loads offline."
        ) from None
    except hf_errors.HfHubHTTPError as err:
        raise CheckpointError(f"{path}: download failed: {err}") from None


# Reading

_NOT_REGULAR = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _read_bytes(path: pathlib.Path) -> bytes:
    # Checked before opening: reading a FIFO or a terminal blocks forever, a device file never ends.
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"{path}: no such file.") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror}.") from None
    if stat.S_ISDIR(mode):
        inside = [name for name in ("sae.safetensors", "sae.pt") if (path / name).is_file()]
        hint = (
            f" It holds {inside[0]}: pass {path / inside[0]}." if inside else " It holds no sae checkpoint."
        )
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file.{hint}")
    if not stat.S_ISREG(mode):
        kind = next((words for test, words in _NOT_REGULAR if test(mode)), "not a regular file")
        raise CheckpointError(f"{path}: is {kind}; checkpoints are read only from regular files.")
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror}.") from None
    if not blob:
        raise CheckpointError(f"{path}: file is empty.")
    return blob


def _looks_like_safetensors(blob: bytes) -> bool:
    if len(blob) < 9:
        return False
    # A reference header is JSON from byte 0, so its first 8 bytes read as an absurd header length.
    (n,) = struct.unpack("<Q", blob[:8])
    return 0 < n <= SAFETENSORS_MAX_HEADER and blob[8:9] == b"{"


def _json(path: pathlib.Path, text: str | bytes, what: str) -> object:
    try:
        return json.loads(text)
    # ValueError covers decoding errors and integers past Python's digit limit; deeply nested JSON
    # exhausts the recursion limit instead of failing to parse.
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({err}).") from None


def _load_reference(path: pathlib.Path, blob: bytes, allow_nonfinite: bool) -> SparseAutoencoder:
    newline = blob.find(b"\n", 0, MAX_HEADER_BYTES)
    if newline < 0:
        raise CheckpointError(f"{path}: not a saev checkpoint (no JSON header line, and not safetensors).")
    try:
        header = json.loads(blob[:newline].decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise CheckpointError(
            f"{path}: not a saev checkpoint (first line is not a JSON header: {err})."
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a saev checkpoint (header is JSON but not an object).")
    cfg, prov = _parse_header(path, header)
    state = _torch_load(path, blob[newline + 1 :])
    _check_weights(path, cfg, state, allow_nonfinite)
    sae = SparseAutoencoder(cfg, prov)
    _copy_weights(sae, state)
    return sae


def _parse_header(path: pathlib.Path, header: dict) -> tuple[config.SaeConfig, config.Provenance]:
    """Map a reference header to a config and the forward it was trained with."""
    if "schema" not in header:
        return _legacy_config(path, header)
    schema = header["schema"]
    cfg = header.get("cfg")
    # JSON `true` and `1.0` equal 1 in Python, but no writer produced them.
    if type(schema) is not int or schema not in (1, 2):
        raise CheckpointError(
            f"{path}: unknown checkpoint schema {reprlib.repr(schema)}; "
            "saev reads schema-less headers and schemas 1 and 2."
        )
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: schema {schema} header has no 'cfg' object.")
    if schema == 1:
        activation = {"cls": _header_value(path, header, "cls", str, "Relu")}
        if "top_k" in cfg:
            activation["params"] = {"top_k": cfg["top_k"]}
    else:
        activation = cfg.get("activation", {"cls": "Relu", "params": {}})
    d_vit, d_sae = _shape_from(path, cfg)
    cfg_obj = _make_config(
        path,
        d_vit=d_vit,
        d_sae=d_sae,
        activation=_reference_activation(path, activation),
        subtract_b_dec=schema == 1,
        normalize_w_dec=_header_value(path, cfg, "normalize_w_dec", bool, True),
        remove_parallel_grads=_header_value(path, cfg, "remove_parallel_grads", bool, True),
        seed=_header_value(path, cfg, "seed", int, 0),
    )
    return cfg_obj, config.Provenance(source=f"V{schema}")


def _legacy_config(path: pathlib.Path, header: dict) -> tuple[config.SaeConfig, config.Provenance]:
    if "l1_coeff" in header or "use_ghost_grads" in header:
        variant, coeff = "V0a", _header_value(path, header, "l1_coeff", float, 4e-4)
    elif "sparsity_coeff" in header:
        variant, coeff = "V0b", _header_value(path, header, "sparsity_coeff", float, 4e-4)
    else:
        variant, coeff = "V0c", 4e-4
    d_vit, d_sae = _shape_from(path, header)
    cfg = _make_config(
        path,
        d_vit=d_vit,
        d_sae=d_sae,
        activation=Relu(),
        subtract_b_dec=True,
        sparsity_coeff=float(coeff),
        normalize_w_dec=_header_value(path, header, "normalize_w_dec", bool, True),
        remove_parallel_grads=_header_value(path, header, "remove_parallel_grads", bool, True),
        seed=_header_value(path, header, "seed", int, 0),
    )
    return cfg, config.Provenance(source=variant)


def _header_value(path: pathlib.Path, header: dict, key: str, kind: type, default: object) -> Any:
    """`header[key]`, or `default` when absent; a CheckpointError naming the field unless it is a `kind`."""
    if key not in header:
        return default
    try:
        return config.checked(f"header field '{key}'", header[key], kind)
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None


def _shape_from(path: pathlib.Path, cfg: dict) -> tuple[int, int]:
    if "d_vit" not in cfg:
        raise CheckpointError(f"{path}: header lacks 'd_vit' (keys: {sorted(cfg)}).")
    d_vit = _header_value(path, cfg, "d_vit", int, None)
    if cfg.get("d_sae") is not None:
        return d_vit, _header_value(path, cfg, "d_sae", int, None)
    if "exp_factor" not in cfg:
        raise CheckpointError(f"{path}: header gives neither 'd_sae' nor 'exp_factor' (keys: {sorted(cfg)}).")
    exp = _header_value(path, cfg, "exp_factor", float, None)
    # Bounded also so that d_vit * exp_factor stays a finite float.
    if not 0 < exp <= MAX_EXP_FACTOR:
        raise CheckpointError(
            f"{path}: header field 'exp_factor' must be in (0, {MAX_EXP_FACTOR}], got {exp!r}."
        )
    return d_vit, round(d_vit * exp)


def _reference_activation(path: pathlib.Path, activation: object) -> Activation:
    if not isinstance(activation, dict) or not isinstance(activation.get("params", {}), dict):
        raise CheckpointError(
            f"{path}: header field 'activation' must be an object {{'cls': NAME, 'params': {{...}}}}, "
            f"got {reprlib.repr(activation)}."
        )
    name = _header_value(path, activation, "cls", str, None)
    params = activation.get("params", {})
    if name == "Relu":
        return Relu()
    # The reference's BatchTopK keeps k per token at inference too, which is plain TopK without ReLU.
    if name in ("TopK", "BatchTopK"):
        return TopK(k=_header_value(path, params, "top_k", int, 32), relu=False)
    raise CheckpointError(
        f"{path}: unknown activation {reprlib.repr(name)} in header; saev reads Relu, TopK and BatchTopK."
    )


def _make_config(path: pathlib.Path, **kwargs: Any) -> config.SaeConfig:
    try:
        return config.SaeConfig(**kwargs)
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None


def _torch_load(path: pathlib.Path, payload: bytes) -> dict:
    if not payload:
        raise CheckpointError(f"{path}: truncated: the header line is not followed by any weights.")
    if not payload.startswith(b"PK\x03\x04"):
        raise CheckpointError(
            f"{path}: weights after the header are not a torch archive (file truncated or corrupt)."
        )
    _check_zip(path, payload)
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise CheckpointError(
            f"{path}: refused: the archive holds pickled objects other than tensors, which could run code. {first}"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        raise CheckpointError(f"{path}: weights archive is truncated or corrupt ({err}).") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: weights archive holds a {type(state).__name__}, not a state dict.")
    return state


def _check_zip(path: pathlib.Path, payload: bytes) -> None:
    """Verify every member's CRC-32: torch.load does not, so flipped bytes would load as weights."""
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as err:
        raise CheckpointError(f"{path}: weights archive is truncated or corrupt ({err}).") from None
    if bad is not None:
        raise CheckpointError(
            f"{path}: weights archive is corrupt: member {bad!r} fails its CRC-32 check (damaged file?)."
        )


def _weight_shapes(cfg: config.SaeConfig) -> dict[str, tuple[int, ...]]:
    return {
        "W_enc": (cfg.d_vit, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.d_vit),
        "b_dec": (cfg.d_vit,),
    }


def _check_weights(path: pathlib.Path, cfg: config.SaeConfig, state: dict, allow_nonfinite: bool) -> None:
    """The four weights against the shapes the header implies, before a model of that size is built."""
    expected = _weight_shapes(cfg)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{path}: weights {missing} are missing (found {sorted(state, key=str)}).")
    extra = sorted(set(state) - set(expected), key=str)
    if extra:
        raise CheckpointError(f"{path}: unexpected entries {extra} in the weights.")
    for name, shape in expected.items():
        tensor = _float_tensor(path, name, state[name])
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{path}: header says d_vit={cfg.d_vit}, d_sae={cfg.d_sae}, so '{name}' should have shape "
                f"{list(shape)}, but the file has {list(tensor.shape)}."
            )
        if not allow_nonfinite:
            _check_finite(path, name, tensor)


def _float_tensor(path: pathlib.Path, name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor) or not value.is_floating_point() or value.layout != torch.strided:
        raise CheckpointError(f"{path}: '{name}' is not a dense floating-point tensor.")
    return value


def _check_finite(path: pathlib.Path, name: str, tensor: Tensor) -> None:
    # min and max propagate NaN, so two scalars decide; a full isfinite mask costs ~15x more.
    if tensor.numel() == 0 or all(math.isfinite(float(v)) for v in torch.aminmax(tensor)):
        return
    n_nan, n_inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
    raise CheckpointError(
        f"{path}: tensor '{name}' holds {n_nan} NaN and {n_inf} infinite values of {tensor.numel()} "
        "(a diverged training run?); pass allow_nonfinite=True to load it anyway."
    )


def _copy_weights(sae: SparseAutoencoder, state: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for name in WEIGHT_NAMES:
            getattr(sae, name).copy_(state[name].to(torch.float32))


def _load_native(path: pathlib.Path, blob: bytes, allow_nonfinite: bool) -> SparseAutoencoder:
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise CheckpointError(
            f"{path}: truncated: the safetensors header declares {n} bytes, but the file has {len(blob)}."
        )
    # safetensors checks the structure first: offsets within the file, metadata values all strings.
    try:
        tensors = st_load(blob)
    except SafetensorError as err:
        raise CheckpointError(f"{path}: safetensors file is truncated or corrupt ({err}).") from None
    header = _json(path, blob[8 : 8 + n], "safetensors header")
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != NATIVE_FORMAT:
        raise CheckpointError(
            f"{path}: a safetensors file, but not a saev SAE (metadata lacks format={NATIVE_FORMAT!r})."
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
    norm = {k: tensors.pop(k) for k in ("act_mean", "act_scale") if k in tensors}
    _check_weights(path, cfg, tensors, allow_nonfinite)
    if norm:
        _check_normalization(path, cfg, norm, allow_nonfinite)
    sae = SparseAutoencoder(cfg, prov)
    _copy_weights(sae, tensors)
    _load_activation_state(path, sae, act_state, allow_nonfinite)
    if norm:
        sae.set_normalization(ActNorm(norm["act_mean"], float(norm["act_scale"]), clamp))
    return sae


def _native_config(path: pathlib.Path, meta: dict) -> tuple[config.SaeConfig, config.Provenance, float]:
    """The config, provenance and normalisation clamp from native metadata, every value type-checked."""
    if "config" not in meta:
        raise CheckpointError(f"{path}: invalid saev metadata: no 'config' entry.")
    norm_meta = _json(path, meta.get("normalization", "null"), "metadata 'normalization'") or {}
    if not isinstance(norm_meta, dict):
        raise CheckpointError(f"{path}: invalid saev metadata: 'normalization' is not an object.")
    try:
        cfg = config.SaeConfig.from_dict(_json(path, meta["config"], "metadata 'config'"))
        prov = config.Provenance.from_dict(_json(path, meta.get("provenance", "{}"), "metadata 'provenance'"))
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


def _check_normalization(
    path: pathlib.Path, cfg: config.SaeConfig, norm: dict[str, Tensor], allow_nonfinite: bool
) -> None:
    expected = {"act_mean": (cfg.d_vit,), "act_scale": ()}
    for name, shape in expected.items():
        if name not in norm:
            raise CheckpointError(f"{path}: normalisation statistics are incomplete: '{name}' is missing.")
        tensor = _float_tensor(path, name, norm[name])
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{path}: '{name}' should have shape {list(shape)}, but the file has {list(tensor.shape)}."
            )
        if not allow_nonfinite:
            _check_finite(path, name, tensor)
    scale = float(norm["act_scale"])
    if scale <= 0 and not allow_nonfinite:
        raise CheckpointError(
            f"{path}: 'act_scale' is {scale}, but a normalisation scale must be positive (it divides every "
            "activation); pass allow_nonfinite=True to load it anyway."
        )


def _load_activation_state(
    path: pathlib.Path, sae: SparseAutoencoder, state: dict[str, Tensor], allow_nonfinite: bool
) -> None:
    expected = sae.activation.state_dict()
    if set(state) != set(expected):
        raise CheckpointError(
            f"{path}: activation {type(sae.cfg.activation).__name__} needs tensors {sorted(expected)}, file has {sorted(state)}."
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: 'activation.{name}' has shape {list(tensor.shape)}, expected {list(expected[name].shape)}."
            )
        if not allow_nonfinite:
            _check_finite(path, f"activation.{name}", _float_tensor(path, f"activation.{name}", tensor))
    sae.activation.load_state_dict(state)


# Writing


def _dump_native(path: pathlib.Path, sae: SparseAutoencoder) -> None:
    tensors = {name: getattr(sae, name).detach() for name in WEIGHT_NAMES}
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
        f.write(_canonical(payload))


def _canonical(payload: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted and the data's CRC-32 recorded.

    safetensors writes metadata in hash-map order, which changes from run to run; sorting makes
    identical SAEs produce identical bytes. Data offsets are relative to the end of the header,
    so only the header is rewritten (space-padded to 8 bytes, as the format allows). safetensors
    has no checksum of its own, so flipped bits in the weights would otherwise load silently.
    """
    (n,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8 : 8 + n])
    data = memoryview(payload)[8 + n :]
    header["__metadata__"][CHECKSUM_KEY] = f"{zlib.crc32(data):08x}"
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + data


def _dump_reference(path: pathlib.Path, sae: SparseAutoencoder) -> None:
    cfg = sae.cfg
    if cfg.d_sae % cfg.d_vit:
        raise CheckpointError(
            f"{path}: the reference .pt format needs d_sae to be a multiple of d_vit ({cfg.d_sae} / {cfg.d_vit})."
        )
    base = {
        "d_vit": cfg.d_vit,
        "exp_factor": cfg.d_sae // cfg.d_vit,
        "n_reinit_samples": 0,
        "remove_parallel_grads": cfg.remove_parallel_grads,
        "normalize_w_dec": cfg.normalize_w_dec,
        "seed": cfg.seed,
    }
    act = cfg.activation
    # Schema 1 encodes x - b_dec with a ReLU; schema 2 encodes x with a ReLU or a sign-keeping TopK.
    if isinstance(act, Relu) and cfg.subtract_b_dec:
        header = {"schema": 1, "cfg": base, "cls": "Relu"}
    elif isinstance(act, Relu) and not cfg.subtract_b_dec:
        header = {"schema": 2, "cfg": base | {"activation": {"cls": "Relu", "params": {}}}}
    elif isinstance(act, TopK) and not act.relu and not cfg.subtract_b_dec:
        header = {"schema": 2, "cfg": base | {"activation": {"cls": "TopK", "params": {"top_k": act.k}}}}
    else:
        raise CheckpointError(
            f"{path}: the reference .pt format cannot express {act} with forward "
            f"{'x - b_dec' if cfg.subtract_b_dec else 'x'}; save it as .safetensors."
        )
    header |= {"commit": "unknown", "lib": f"saev {saev.__version__}"}
    if sae.normalization is not None:
        warnings.warn(
            f"{path}: the reference .pt format has no place for normalisation statistics; "
            "they are not saved (use .safetensors to keep them).",
            stacklevel=3,
        )
    state = {name: getattr(sae, name).detach().cpu().contiguous() for name in WEIGHT_NAMES}
    with atomic_open(path) as f:
        f.write((json.dumps(header) + "\n").encode("utf-8"))
        torch.save(state, f)

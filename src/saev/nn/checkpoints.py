"""Read and write SAE checkpoints: every reference `sae.pt` header variant and the native safetensors format.

Reference files are one JSON header line followed by a `torch.save` zip archive of the four
weight tensors; they are read with `torch.load(weights_only=True)`, which refuses pickled code.
Native files are safetensors with the configuration, forward variant, normalisation statistics
and provenance in the metadata. See docs in README.md ("Checkpoint formats").
"""

import io
import json
import os
import pathlib
import pickle
import struct
import warnings
import zipfile

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
HF_PREFIX = "hf://"


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load an SAE from a local path, `hf://ORG/NAME` (file `sae.pt`) or `hf://ORG/NAME/FILE`."""
    local = resolve(str(path))
    blob = _read_bytes(local)
    if _looks_like_safetensors(blob):
        sae = _load_native(local, blob)
    else:
        sae = _load_reference(local, blob)
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


def _read_bytes(path: pathlib.Path) -> bytes:
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file.") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file.") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror}.") from None
    if not blob:
        raise CheckpointError(f"{path}: file is empty.")
    return blob


def _looks_like_safetensors(blob: bytes) -> bool:
    if len(blob) < 9:
        return False
    (n,) = struct.unpack("<Q", blob[:8])
    return 0 < n <= len(blob) - 8 and blob[8:9] == b"{"


def _load_reference(path: pathlib.Path, blob: bytes) -> SparseAutoencoder:
    newline = blob.find(b"\n", 0, MAX_HEADER_BYTES)
    if newline < 0:
        raise CheckpointError(f"{path}: not a saev checkpoint (no JSON header line, and not safetensors).")
    try:
        header = json.loads(blob[:newline].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a saev checkpoint (first line is not a JSON header).") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a saev checkpoint (header is JSON but not an object).")
    cfg, prov = _parse_header(path, header)
    state = _torch_load(path, blob[newline + 1 :])
    sae = SparseAutoencoder(cfg, prov)
    _load_weights(path, sae, state, header_desc=_describe(cfg))
    return sae


def _parse_header(path: pathlib.Path, header: dict) -> tuple[config.SaeConfig, config.Provenance]:
    """Map a reference header to a config and the forward it was trained with."""
    if "schema" not in header:
        return _legacy_config(path, header)
    schema = header["schema"]
    cfg = header.get("cfg")
    if schema not in (1, 2):
        raise CheckpointError(
            f"{path}: unknown checkpoint schema {schema!r}; saev reads schema-less headers and schemas 1 and 2."
        )
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: schema {schema} header has no 'cfg' object.")
    if schema == 1 and header.get("cls", "Relu") in ("Relu", "TopK", "BatchTopK"):
        activation = {"cls": header.get("cls", "Relu"), "params": {"top_k": cfg.get("top_k", 32)}}
    else:
        activation = cfg.get("activation", {"cls": "Relu", "params": {}})
    act = _reference_activation(path, activation)
    d_vit, d_sae = _shape_from(path, cfg)
    variant = f"V{schema}"
    cfg_obj = _make_config(
        path,
        d_vit=d_vit,
        d_sae=d_sae,
        activation=act,
        subtract_b_dec=schema == 1,
        normalize_w_dec=bool(cfg.get("normalize_w_dec", True)),
        remove_parallel_grads=bool(cfg.get("remove_parallel_grads", True)),
        seed=int(cfg.get("seed", 0)),
    )
    return cfg_obj, config.Provenance(source=variant)


def _legacy_config(path: pathlib.Path, header: dict) -> tuple[config.SaeConfig, config.Provenance]:
    if "l1_coeff" in header or "use_ghost_grads" in header:
        variant, coeff = "V0a", header.get("l1_coeff", 4e-4)
    elif "sparsity_coeff" in header:
        variant, coeff = "V0b", header["sparsity_coeff"]
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
        normalize_w_dec=bool(header.get("normalize_w_dec", True)),
        remove_parallel_grads=bool(header.get("remove_parallel_grads", True)),
        seed=int(header.get("seed", 0)),
    )
    return cfg, config.Provenance(source=variant)


def _shape_from(path: pathlib.Path, cfg: dict) -> tuple[int, int]:
    d_vit = cfg.get("d_vit")
    if not isinstance(d_vit, int):
        raise CheckpointError(f"{path}: header lacks an integer 'd_vit' (keys: {sorted(cfg)}).")
    if isinstance(cfg.get("d_sae"), int):
        return d_vit, cfg["d_sae"]
    exp = cfg.get("exp_factor")
    if not isinstance(exp, (int, float)):
        raise CheckpointError(f"{path}: header gives neither 'd_sae' nor 'exp_factor' (keys: {sorted(cfg)}).")
    return d_vit, round(d_vit * exp)


def _reference_activation(path: pathlib.Path, activation: dict) -> Activation:
    name = activation.get("cls") if isinstance(activation, dict) else None
    params = activation.get("params", {}) if isinstance(activation, dict) else {}
    if name == "Relu":
        return Relu()
    # The reference's BatchTopK keeps k per token at inference too, which is plain TopK without ReLU.
    if name in ("TopK", "BatchTopK"):
        return TopK(k=int(params.get("top_k", 32)), relu=False)
    raise CheckpointError(
        f"{path}: unknown activation {name!r} in header; saev reads Relu, TopK and BatchTopK."
    )


def _make_config(path: pathlib.Path, **kwargs) -> config.SaeConfig:
    try:
        return config.SaeConfig(**kwargs)
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None


def _torch_load(path: pathlib.Path, payload: bytes) -> dict:
    if not payload:
        raise CheckpointError(f"{path}: truncated: the header line is not followed by any weights.")
    if not payload.startswith(b"PK\x03\x04"):
        raise CheckpointError(
            f"{path}: weights after the header are not a torch archive (file corrupt or truncated)."
        )
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


def _describe(cfg: config.SaeConfig) -> str:
    return f"d_vit={cfg.d_vit}, d_sae={cfg.d_sae}"


def _load_weights(
    path: pathlib.Path, sae: SparseAutoencoder, state: dict[str, Tensor], header_desc: str
) -> None:
    expected = {name: tuple(getattr(sae, name).shape) for name in WEIGHT_NAMES}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{path}: weights {missing} are missing (found {sorted(state)}).")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: unexpected entries {extra} in the weights.")
    for name, shape in expected.items():
        tensor = state[name]
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            raise CheckpointError(f"{path}: '{name}' is not a floating-point tensor.")
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{path}: header says {header_desc}, so '{name}' should have shape {list(shape)}, "
                f"but the file has {list(tensor.shape)}."
            )
    with torch.no_grad():
        for name in WEIGHT_NAMES:
            getattr(sae, name).copy_(state[name].to(torch.float32))


def _load_native(path: pathlib.Path, blob: bytes) -> SparseAutoencoder:
    try:
        tensors = st_load(blob)
        (n,) = struct.unpack("<Q", blob[:8])
        meta = json.loads(blob[8 : 8 + n]).get("__metadata__") or {}
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: safetensors file is truncated or corrupt ({err}).") from None
    if meta.get("format") != NATIVE_FORMAT:
        raise CheckpointError(
            f"{path}: a safetensors file, but not a saev SAE (metadata lacks format={NATIVE_FORMAT!r})."
        )
    try:
        cfg = config.SaeConfig.from_dict(json.loads(meta["config"]))
        prov = config.Provenance.from_dict(json.loads(meta.get("provenance", "{}")))
        norm_meta = json.loads(meta.get("normalization", "null")) or {}
    except (KeyError, TypeError, json.JSONDecodeError, ConfigError) as err:
        raise CheckpointError(f"{path}: invalid saev metadata ({err}).") from None
    sae = SparseAutoencoder(cfg, prov)
    act_state = {
        k.removeprefix("activation."): tensors.pop(k) for k in list(tensors) if k.startswith("activation.")
    }
    norm = {k: tensors.pop(k) for k in ("act_mean", "act_scale") if k in tensors}
    _load_weights(path, sae, tensors, header_desc=_describe(cfg))
    _load_activation_state(path, sae, act_state)
    if norm:
        if set(norm) != {"act_mean", "act_scale"} or tuple(norm["act_mean"].shape) != (cfg.d_vit,):
            raise CheckpointError(f"{path}: normalisation statistics are incomplete or have the wrong shape.")
        sae.set_normalization(
            ActNorm(norm["act_mean"], float(norm["act_scale"]), norm_meta.get("clamp", DEFAULT_CLAMP))
        )
    return sae


def _load_activation_state(path: pathlib.Path, sae: SparseAutoencoder, state: dict[str, Tensor]) -> None:
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
    """The same safetensors file with its JSON header's keys sorted.

    safetensors writes metadata in hash-map order, which changes from run to run; sorting makes
    identical SAEs produce identical bytes. Data offsets are relative to the end of the header,
    so only the header is rewritten (space-padded to 8 bytes, as the format allows).
    """
    (n,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8 : 8 + n])
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + payload[8 + n :]


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

"""Checks every checkpoint reader shares: files come from the internet and from disks, so nothing in them is trusted.

Only regular files are opened, JSON is parsed with its failures named, and tensors are compared
with the shapes a config implies (and checked for NaN/inf) before a model of that size is built.
"""

import io
import json
import math
import pathlib
import pickle
import zipfile
import zlib
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from torch import Tensor

from saev import fileio
from saev.errors import CheckpointError, ConfigError
from saev.nn import config
from saev.nn.modeling import SparseAutoencoder

WEIGHT_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
"""The four tensors every architecture has, under their saev names."""
REQUIRED = object()
"""`config_value` default meaning the field must be present."""


def read_regular_file(path: pathlib.Path, limit: int = -1) -> bytes:
    """The bytes of `path` (the first `limit` if given), refusing folders, FIFOs, devices, sockets and
    empty files by name."""
    blob = fileio.read_input(path, "checkpoint file", CheckpointError, limit)
    if not blob:
        raise CheckpointError(f"{path}: file is empty.")
    return blob


def parse_json(path: pathlib.Path, text: str | bytes, what: str) -> object:
    try:
        return json.loads(text)
    # ValueError covers decoding errors and integers past Python's digit limit; deeply nested JSON
    # exhausts the recursion limit instead of failing to parse.
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({err}).") from None


def make_config(path: pathlib.Path, **kwargs: Any) -> config.SaeConfig:
    try:
        return config.SaeConfig(**kwargs)
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None


def weight_shapes(cfg: config.SaeConfig) -> dict[str, tuple[int, ...]]:
    return {
        "W_enc": (cfg.d_vit, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.d_vit),
        "b_dec": (cfg.d_vit,),
    }


def check_weights(path: pathlib.Path, cfg: config.SaeConfig, state: dict, allow_nonfinite: bool) -> None:
    """The four weights against the shapes the header implies, before a model of that size is built."""
    expected = weight_shapes(cfg)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{path}: weights {missing} are missing (found {sorted(state, key=str)}).")
    extra = sorted(set(state) - set(expected), key=str)
    if extra:
        raise CheckpointError(f"{path}: unexpected entries {extra} in the weights.")
    for name, shape in expected.items():
        tensor = float_tensor(path, name, state[name])
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{path}: header says d_vit={cfg.d_vit}, d_sae={cfg.d_sae}, so '{name}' should have shape "
                f"{list(shape)}, but the file has {list(tensor.shape)}."
            )
        if not allow_nonfinite:
            check_finite(path, name, tensor)


def float_tensor(path: pathlib.Path, name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor) or not value.is_floating_point() or value.layout != torch.strided:
        raise CheckpointError(f"{path}: '{name}' is not a dense floating-point tensor.")
    return value


def check_finite(path: pathlib.Path, name: str, tensor: Tensor) -> None:
    # min and max propagate NaN, so two scalars decide; a full isfinite mask costs ~15x more.
    if tensor.numel() == 0 or all(math.isfinite(float(v)) for v in torch.aminmax(tensor)):
        return
    n_nan, n_inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
    raise CheckpointError(
        f"{path}: tensor '{name}' holds {n_nan} NaN and {n_inf} infinite values of {tensor.numel()} "
        "(a diverged training run?); pass allow_nonfinite=True to load it anyway."
    )


def copy_weights(sae: SparseAutoencoder, state: dict[str, Tensor]) -> None:
    """Give `sae` the four weights of `state` (checked already), taking over float32 tensors without a copy."""
    for name in WEIGHT_NAMES:
        setattr(sae, name, torch.nn.Parameter(state[name].to(torch.float32).contiguous()))


def check_normalization(
    path: pathlib.Path, cfg: config.SaeConfig, norm: dict[str, Tensor], allow_nonfinite: bool
) -> None:
    expected = {"act_mean": (cfg.d_vit,), "act_scale": ()}
    for name, shape in expected.items():
        if name not in norm:
            raise CheckpointError(f"{path}: normalisation statistics are incomplete: '{name}' is missing.")
        tensor = float_tensor(path, name, norm[name])
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{path}: '{name}' should have shape {list(shape)}, but the file has {list(tensor.shape)}."
            )
        if not allow_nonfinite:
            check_finite(path, name, tensor)
    scale = float(norm["act_scale"])
    if scale <= 0 and not allow_nonfinite:
        raise CheckpointError(
            f"{path}: 'act_scale' is {scale}, but a normalisation scale must be positive (it divides every "
            "activation); pass allow_nonfinite=True to load it anyway."
        )


def load_activation_state(
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
            check_finite(path, f"activation.{name}", float_tensor(path, f"activation.{name}", tensor))
    sae.activation.load_state_dict(state)


def read_json_object(path: pathlib.Path) -> dict[str, Any]:
    """A JSON file that must hold an object (a config), with failures naming the file."""
    value = parse_json(path, read_regular_file(path), "file")
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(value).__name__}.")
    return value


def read_safetensors(path: pathlib.Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file (no code runs while reading), failures naming the file."""
    return parse_safetensors(path, read_regular_file(path))


def parse_safetensors(path: pathlib.Path, blob: bytes) -> dict[str, Tensor]:
    """The tensors of `blob`, the bytes of the safetensors file `path`."""
    try:
        return st_load(blob)
    except SafetensorError as err:
        raise CheckpointError(f"{path}: safetensors file is truncated or corrupt ({err}).") from None


def config_value(
    path: pathlib.Path, cfg: dict, key: str, kind: type, default: object = REQUIRED, what: str = "field"
) -> Any:
    """`cfg[key]` type-checked as a `kind` (see `config.checked`); `default` when absent, or an error
    naming the key if it is required."""
    if key not in cfg:
        if default is REQUIRED:
            raise CheckpointError(f"{path}: lacks the {what} '{key}' (keys: {sorted(cfg)}).")
        return default
    try:
        return config.checked(f"{what} '{key}'", cfg[key], kind)
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None


def build(
    path: pathlib.Path,
    cfg: config.SaeConfig,
    prov: config.Provenance,
    weights: dict[str, Tensor],
    activation_state: dict[str, Tensor],
    allow_nonfinite: bool,
) -> SparseAutoencoder:
    """An SAE from weights already under saev's names, every shape and value checked first."""
    check_weights(path, cfg, weights, allow_nonfinite)
    sae = SparseAutoencoder(cfg, prov, init=False)
    copy_weights(sae, weights)
    load_activation_state(path, sae, activation_state, allow_nonfinite)
    return sae


def torch_load(path: pathlib.Path, payload: bytes, safe_globals: list | None = None) -> object:
    """A torch.save archive read with `weights_only=True` (plus `safe_globals`, stand-ins for classes that
    hold no code), after checking every member's CRC-32."""
    if not payload:
        raise CheckpointError(f"{path}: truncated: the header line is not followed by any weights.")
    if not payload.startswith(b"PK\x03\x04"):
        raise CheckpointError(
            f"{path}: weights after the header are not a torch archive (file truncated or corrupt)."
        )
    check_zip(path, payload)
    try:
        with torch.serialization.safe_globals(safe_globals or []):
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise CheckpointError(
            f"{path}: refused: the archive holds pickled objects other than tensors, which could run code. {first}"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        raise CheckpointError(f"{path}: weights archive is truncated or corrupt ({err}).") from None
    return state


def check_zip(path: pathlib.Path, payload: bytes) -> None:
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

"""Linear probes on a ViT's final tokens, saved as safetensors with JSON metadata.

A classification probe reads one vector per image (the final [CLS] token, or the mean of the
patch tokens for models without one); a segmentation probe reads every patch token. Both read the
model's final tokens after its final norm (`Vit.features`).

Probe files are as untrusted as SAE checkpoints: `load_probe` reads only regular files, once, and
checks every tensor's shape and values and every metadata field's type before a head uses them.
"""

import collections
import dataclasses
import json
import math
import os
import pathlib
import reprlib
import typing
from typing import Any, Literal

import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from saev.errors import ConfigError
from saev.fileio import atomic_open, read_input
from saev.nn import config

FORMAT = "saev-probe/1"
Task = Literal["classification", "segmentation"]
Pool = Literal["cls", "mean"]


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    weight_DC: Float[Tensor, "d_vit classes"]
    bias_C: Float[Tensor, " classes"]
    classes: tuple[str, ...]
    task: Task
    pool: Pool
    """Classification: which vector of an image it reads (segmentation reads every patch)."""
    vit_family: str
    vit_ckpt: str
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Validation scores of the kept probe (accuracy, loss, ...)."""
    grid: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Every (learning rate, weight decay) tried, with its validation scores."""
    ignore_label: int | None = None
    """Segmentation: the mask value that marks pixels without a class."""

    def logits(self, features_BTD: Float[Tensor, "batch tokens d_vit"], n_prefix: int) -> Tensor:
        """[batch, classes] for classification, [batch, patches, classes] for segmentation."""
        if self.task == "segmentation":
            return features_BTD[:, n_prefix:] @ self.weight_DC + self.bias_C
        vec_BD = features_BTD[:, 0] if self.pool == "cls" else features_BTD[:, n_prefix:].mean(1)
        return vec_BD @ self.weight_DC + self.bias_C


_REQUIRED = ("classes", "task", "pool", "vit_family", "vit_ckpt")
_OPTIONAL = ("metrics", "grid", "ignore_label")


def save_probe(path: str | os.PathLike, probe: LinearProbe) -> None:
    meta = {k: v for k, v in dataclasses.asdict(probe).items() if k not in ("weight_DC", "bias_C")}
    tensors = {
        "weight": probe.weight_DC.detach().cpu().contiguous(),
        "bias": probe.bias_C.detach().cpu().contiguous(),
    }
    with atomic_open(path) as f:
        f.write(save(tensors, metadata={"format": FORMAT, "probe": json.dumps(meta)}))


def load_probe(path: str | os.PathLike) -> LinearProbe:
    """The probe in `path`, every tensor and field checked; ConfigError naming the file and the field."""
    path = pathlib.Path(path)
    blob = read_input(path, "probe file")
    meta = _metadata(path, blob)
    try:
        tensors = load(blob)
    except SafetensorError as err:
        raise ConfigError(f"{path}: safetensors file is truncated or corrupt ({err}).") from None
    fields = _fields(path, meta)
    weight, bias = _weights(path, tensors, len(fields["classes"]))
    return LinearProbe(weight, bias, **fields)


def _metadata(path: pathlib.Path, blob: bytes) -> dict[str, Any]:
    if len(blob) < 8:
        raise ConfigError(f"{path}: not a safetensors file ({len(blob)} bytes).")
    n = int.from_bytes(blob[:8], "little")
    if 8 + n > len(blob):
        raise ConfigError(
            f"{path}: not a safetensors file, or truncated: its header declares {n} bytes, the file has "
            f"{len(blob)}."
        )
    try:
        header = json.loads(blob[8 : 8 + n])
    except (ValueError, RecursionError) as err:
        raise ConfigError(f"{path}: not a safetensors file (header: {err}).") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ConfigError(f"{path}: not a saev probe (metadata format {found!r}, expected {FORMAT!r}).")
    return meta


def _fields(path: pathlib.Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The probe's metadata fields, each of its type (and enumeration), as `LinearProbe` takes them."""
    if "probe" not in meta:
        raise ConfigError(f"{path}: incomplete probe: no metadata 'probe' (its fields).")
    try:
        fields = json.loads(meta["probe"])
    except (ValueError, RecursionError) as err:
        raise ConfigError(f"{path}: metadata 'probe' is not valid JSON ({err}).") from None
    if not isinstance(fields, dict):
        raise ConfigError(f"{path}: metadata 'probe' must be a JSON object, got {type(fields).__name__}.")
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise ConfigError(f"{path}: incomplete probe: lacks the field(s) {missing}.")
    unknown = sorted(set(fields) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ConfigError(f"{path}: unknown probe field(s) {unknown} (written by a newer saev?).")
    for name, choices in (("task", Task), ("pool", Pool)):
        if fields[name] not in typing.get_args(choices):
            raise ConfigError(
                f"{path}: probe field '{name}' is {reprlib.repr(fields[name])}; expected one of "
                f"{', '.join(typing.get_args(choices))}."
            )
    for name, kind in (("vit_family", str), ("vit_ckpt", str), ("metrics", dict), ("ignore_label", int)):
        if name in fields and not (name == "ignore_label" and fields[name] is None):
            try:
                config.checked(f"probe field '{name}'", fields[name], kind)
            except ConfigError as err:
                raise ConfigError(f"{path}: {err}") from None
    grid = fields.get("grid", [])
    if not isinstance(grid, list) or not all(isinstance(row, dict) for row in grid):
        raise ConfigError(f"{path}: probe field 'grid' must be a list of objects, got {reprlib.repr(grid)}.")
    return {**fields, "classes": _classes(path, fields["classes"])}


def _classes(path: pathlib.Path, classes: object) -> tuple[str, ...]:
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        raise ConfigError(
            f"{path}: probe field 'classes' must be a list of non-empty strings, got {reprlib.repr(classes)}."
        )
    if len(classes) < 2:
        raise ConfigError(
            f"{path}: probe field 'classes' names {len(classes)} class(es); a probe has at least two."
        )
    repeated = sorted(c for c, n in collections.Counter(classes).items() if n > 1)
    if repeated:
        raise ConfigError(f"{path}: probe field 'classes' names {repeated} more than once.")
    return tuple(classes)


def _weights(path: pathlib.Path, tensors: dict[str, Tensor], n_classes: int) -> tuple[Tensor, Tensor]:
    """`weight` [d_vit, classes] and `bias` [classes] as float32, finite; nothing else in the file."""
    if set(tensors) != {"weight", "bias"}:
        raise ConfigError(
            f"{path}: a probe holds tensors 'weight' and 'bias', the file has {sorted(tensors)}."
        )
    expected = {"weight": "[d_vit, classes]", "bias": "[classes]"}
    out = {}
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ConfigError(f"{path}: tensor '{name}' is {tensor.dtype}, not floating-point.")
        # Converted first: float64 values past float32's range become infinite here.
        tensor = out[name] = tensor.float()
        good = tensor.shape[-1:] == (n_classes,) and tensor.ndim == (2 if name == "weight" else 1)
        if not good or tensor.numel() == 0:
            raise ConfigError(
                f"{path}: tensor '{name}' should have shape {expected[name]} with {n_classes} classes (the "
                f"probe names {n_classes}), but the file has {list(tensor.shape)}."
            )
        # min and max propagate NaN, so two scalars decide.
        if not all(math.isfinite(float(v)) for v in torch.aminmax(tensor)):
            n_nan, n_inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
            raise ConfigError(
                f"{path}: tensor '{name}' holds {n_nan} NaN and {n_inf} infinite values of {tensor.numel()}; "
                "retrain the probe."
            )
    return out["weight"], out["bias"]

"""Linear probes on a ViT's final tokens, saved as safetensors with JSON metadata.

A classification probe reads one vector per image (the final [CLS] token, or the mean of the
patch tokens for models without one); a segmentation probe reads every patch token. Both read the
model's final tokens after its final norm (`Vit.features`).
"""

import dataclasses
import json
import os
import pathlib
from typing import Any, Literal

from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from saev.errors import ConfigError
from saev.fileio import atomic_open

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


def save_probe(path: str | os.PathLike, probe: LinearProbe) -> None:
    meta = {k: v for k, v in dataclasses.asdict(probe).items() if k not in ("weight_DC", "bias_C")}
    tensors = {
        "weight": probe.weight_DC.detach().cpu().contiguous(),
        "bias": probe.bias_C.detach().cpu().contiguous(),
    }
    with atomic_open(path) as f:
        f.write(save(tensors, metadata={"format": FORMAT, "probe": json.dumps(meta)}))


def load_probe(path: str | os.PathLike) -> LinearProbe:
    path = pathlib.Path(path)
    try:
        tensors = load_file(path)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(n)).get("__metadata__") or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such probe file.") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a safetensors file ({err}).") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(
            f"{path}: not a saev probe (metadata format {meta.get('format')!r}, expected {FORMAT!r})."
        )
    try:
        fields = json.loads(meta["probe"])
        probe = LinearProbe(
            tensors["weight"].float(),
            tensors["bias"].float(),
            **{**fields, "classes": tuple(fields["classes"])},
        )
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: incomplete probe ({err}).") from None
    if probe.weight_DC.shape[1] != len(probe.classes) or probe.bias_C.shape != (len(probe.classes),):
        raise ConfigError(
            f"{path}: weights for {probe.weight_DC.shape[1]} classes, but {len(probe.classes)} class names."
        )
    return probe

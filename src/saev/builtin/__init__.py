"""The ViT shipped with saev: a small model trained on `saev.synthetic` concept images.

Its concepts are known exactly, down to the patch, which makes it the ground truth for offline
demos: an SAE trained on its activations can be scored against the concepts it was taught.
Weights live next to this file as `<name>.safetensors` (float16), with the architecture, concept
names and held-out accuracy in the safetensors metadata; `python -m saev.builtin.train` makes them.
See docs/builtin.md.
"""

import json
import pathlib
from typing import Any

import safetensors
import safetensors.torch

from saev.builtin.model import ConceptVit, VitConfig
from saev.errors import ModelError
from saev.synthetic import CONCEPTS

DEFAULT = "shapes-vit"
CONFIGS: dict[str, VitConfig] = {DEFAULT: VitConfig()}
NAMES: tuple[str, ...] = tuple(CONFIGS)
FORMAT = "saev-builtin-vit/1"

__all__ = [
    "CONFIGS",
    "DEFAULT",
    "FORMAT",
    "NAMES",
    "ConceptVit",
    "VitConfig",
    "config",
    "load",
    "metadata",
    "weights_path",
]


def config(name: str) -> VitConfig:
    if name not in CONFIGS:
        raise ModelError(f"unknown built-in ViT {name!r}; choose one of {', '.join(NAMES)}.")
    return CONFIGS[name]


def weights_path(name: str) -> pathlib.Path:
    config(name)
    return pathlib.Path(__file__).parent / f"{name}.safetensors"


def metadata(name: str) -> dict[str, Any]:
    """The shipped file's metadata, JSON values decoded: format, config, concepts, metrics, training."""
    path = weights_path(name)
    if not path.is_file():
        raise ModelError(
            f"weights of built-in ViT {name!r} missing at {path}; train them with "
            f"`python -m saev.builtin.train --out {path}`."
        )
    with safetensors.safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    if raw.get("format") != FORMAT:
        raise ModelError(f"{path}: not a {FORMAT} file (format={raw.get('format')!r}).")
    return {key: value if key == "format" else json.loads(value) for key, value in raw.items()}


def load(name: str, pretrained: bool = True) -> ConceptVit:
    """The built-in ViT `name` in eval mode; `pretrained=False` gives random weights."""
    cfg = config(name)
    model = ConceptVit(cfg)
    if pretrained:
        meta = metadata(name)
        if VitConfig.from_dict(meta["config"]) != cfg:
            raise ModelError(
                f"{weights_path(name)}: trained with config {meta['config']}, but {name!r} is {cfg}."
            )
        if tuple(meta["concepts"]) != CONCEPTS:
            raise ModelError(
                f"{weights_path(name)}: trained on concepts {meta['concepts']}, not {list(CONCEPTS)}."
            )
        state = safetensors.torch.load_file(weights_path(name))
        # Shipped as float16 to keep the package small; computation stays in float32.
        model.load_state_dict({key: value.float() for key, value in state.items()})
    return model.eval()

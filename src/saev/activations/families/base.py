"""What a ViT family provides (one module per family in `saev.activations.families`)."""

import dataclasses
from collections.abc import Callable

import torch
from PIL import Image

from saev.activations.vit import Vit

Transform = Callable[[Image.Image], torch.Tensor]
"""PIL image -> float tensor [3, H, W]; its leading steps that return PIL images are the crop the
model sees (see `saev.activations.transforms.visible_crop`)."""


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    """The `--vit-family` value."""
    summary: str
    """What the family is, in a few words."""
    checkpoints: str
    """How `--vit-ckpt` names a model, with examples."""
    build: Callable[[str, bool], Vit]
    """(ckpt, pretrained) -> the model; `pretrained=False` gives the architecture with random weights."""
    transform: Callable[[str], Transform]
    """ckpt -> the preprocessing the model was trained with."""
    text_tower: bool = False
    """Its models have a text tower: zero-shot heads (`clip-zero-shot:`) and candidate words for naming."""
    concept_heads: bool = False
    """Its models carry their own concept heads (`--head builtin-image`, `builtin-patch`)."""

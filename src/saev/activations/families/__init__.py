"""ViT families, one module each; this registry is the only list of them.

To add one, write `saev/activations/families/<name>.py` with a `Family` (name, checkpoint syntax,
builder, transform; a `Vit` subclass when the model's forward needs splitting differently), then
register it below. The `--vit-family` choices, the commands' help and docs/vit-families.md follow.
"""

import typing

from saev.activations.compat import torchvision_matches_torch
from saev.activations.families import builtin, dinov2, hf, openclip, timm_vit
from saev.activations.families.base import Family, Transform
from saev.activations.vit import Vit
from saev.errors import ModelError

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        openclip.CLIP,
        openclip.SIGLIP,
        dinov2.FAMILY,
        builtin.FAMILY,
        timm_vit.FAMILY,
        hf.FAMILY,
    )
}

if typing.TYPE_CHECKING:
    FamilyName = str  # a type checker cannot read a Literal built from the registry
else:
    FamilyName = typing.Literal[tuple(FAMILIES)]  # the choices tyro offers and checks


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise ModelError(f"unknown ViT family {name!r}; choose one of {', '.join(FAMILIES)}.")
    return FAMILIES[name]


def make_vit(family: str, ckpt: str, *, pretrained: bool = True) -> Vit:
    """Build the ViT of `family` named `ckpt`, in eval mode on the CPU.

    `pretrained=False` builds the same architecture with random weights (tests, debugging).
    """
    with torchvision_matches_torch():  # timm and OpenCLIP import torchvision as they build
        return get(family).build(ckpt, pretrained).eval()


def make_img_transform(family: str, ckpt: str) -> Transform:
    """The preprocessing `family`/`ckpt` was trained with: PIL image -> float tensor [3, H, W]."""
    with torchvision_matches_torch():  # every family's preprocessing is torchvision's
        return get(family).transform(ckpt)


def describe() -> str:
    """One line per family: name, what it is, and how checkpoints are named."""
    return "\n".join(f"  {f.name}: {f.summary}; --vit-ckpt {f.checkpoints}" for f in FAMILIES.values())


def markdown_table() -> str:
    """The family table of docs/vit-families.md."""
    rows = ["| family | what | `--vit-ckpt` |", "|---|---|---|"]
    rows += [f"| `{f.name}` | {f.summary} | {f.checkpoints} |" for f in FAMILIES.values()]
    return "\n".join(rows)

"""ViT wrappers (one module per family in `saev.activations.families`), their image transforms,
and recording of their activations."""

from saev.activations.families import FAMILIES, make_img_transform, make_vit
from saev.activations.recorder import RecordedVisionTransformer
from saev.activations.transforms import visible_crop
from saev.activations.vit import TokenLayout, Vit

__all__ = [
    "FAMILIES",
    "RecordedVisionTransformer",
    "TokenLayout",
    "Vit",
    "make_img_transform",
    "make_vit",
    "visible_crop",
]

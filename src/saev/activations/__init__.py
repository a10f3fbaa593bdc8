"""ViT wrappers, their image transforms, and recording of their activations."""

from saev.activations.recorder import RecordedVisionTransformer
from saev.activations.transforms import make_img_transform, visible_crop
from saev.activations.vits import FAMILIES, Vit, make_vit

__all__ = [
    "FAMILIES",
    "RecordedVisionTransformer",
    "Vit",
    "make_img_transform",
    "make_vit",
    "visible_crop",
]

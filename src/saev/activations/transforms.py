"""The exact crop a ViT sees (for heatmaps), and preprocessing shared by several families."""

import torch
from PIL import Image

from saev.activations.families.base import Transform
from saev.data.images import to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_crop_normalize(
    resize: int, crop: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]
) -> Transform:
    """Shorter side to `resize` (aspect kept), centre crop (height, width), scale to [0, 1], normalise."""
    from torchvision.transforms import v2  # 1.7 s to import: commands that never preprocess skip it

    return v2.Compose(
        [
            to_rgb,
            v2.Resize(size=resize),
            v2.CenterCrop(size=crop),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def visible_crop(img_transform: Transform, img: Image.Image) -> Image.Image:
    """The RGB crop the model sees: every leading step of `img_transform` that returns a PIL image.

    Resizing and cropping happen on PIL images before conversion to a tensor in every family's
    transform, so stopping at the first non-PIL result gives the exact pixels behind the patches.
    """
    steps = getattr(img_transform, "transforms", [img_transform])
    out = img
    for step in steps:
        nxt = step(out)
        if not isinstance(nxt, Image.Image):
            break
        out = nxt
    return to_rgb(out)

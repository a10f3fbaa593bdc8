"""Image preprocessing per ViT family, and the exact crop each model sees (for heatmaps)."""

from collections.abc import Callable

import torch
from PIL import Image

from saev.data.images import to_rgb
from saev.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_img_transform(family: str, ckpt: str) -> Callable[[Image.Image], torch.Tensor]:
    """The preprocessing `family`/`ckpt` was trained with: PIL image -> float tensor [3, H, W]."""
    if family in ("clip", "siglip"):
        import open_clip

        from saev.activations.vits import create_open_clip

        model = create_open_clip(ckpt, "preprocess")
        cfg = open_clip.transform.PreprocessCfg(**model.visual.preprocess_cfg)
        return open_clip.transform.image_transform_v2(cfg, is_train=False)
    if family == "dinov2":
        from torchvision.transforms import v2

        from saev.activations.vits import parse_dinov2

        parse_dinov2(ckpt)
        # The public DINOv2 SAEs: shorter side to 256, centre crop 224, ImageNet statistics.
        return v2.Compose(
            [
                to_rgb,
                v2.Resize(size=256),
                v2.CenterCrop(size=(224, 224)),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ]
        )
    if family == "builtin":
        from saev import builtin

        return builtin.make_transform(ckpt)
    from saev.activations.vits import FAMILIES

    raise ModelError(f"unknown ViT family {family!r}; choose one of {', '.join(FAMILIES)}.")


def visible_crop(img_transform: Callable, img: Image.Image) -> Image.Image:
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

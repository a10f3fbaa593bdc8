"""DINOv2 through timm's port of the official weights, preprocessed as the public DINOv2 SAEs were.

`ckpt` is a torch-hub name such as `dinov2_vitb14_reg`, optionally `NAME/PATH` to load an official
`.pth` file. The position embedding is resampled to 224 px exactly as the official model does at
run time; images are resized (shorter side 256), centre-cropped to 224 and normalised with the
ImageNet statistics.
"""

import re
from typing import Any

import torch
import torch.nn.functional as F

from saev.activations.families.base import Family, Transform
from saev.activations.families.timm_trunk import TimmTrunkVit, Trunk
from saev.activations.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_crop_normalize
from saev.activations.vit import Vit
from saev.errors import ModelError

_NAME = re.compile(r"^dinov2_vit([sblg])14(_reg)?$")
_SIZES = {"s": "small", "b": "base", "l": "large", "g": "giant"}
IMG_SIZE = 224


def parse(ckpt: str) -> tuple[str, str | None]:
    """`dinov2_vitb14_reg[/PATH]` -> (timm model name, local weights path or None)."""
    name, _, path = ckpt.partition("/")
    match = _NAME.match(name)
    if match is None:
        raise ModelError(
            f"DINOv2 checkpoint {ckpt!r}: expected a name like dinov2_vitb14 or dinov2_vitb14_reg, optionally followed by /PATH to weights."
        )
    size, reg = match.groups()
    return f"vit_{_SIZES[size]}_patch14{'_reg4' if reg else ''}_dinov2.lvd142m", path or None


def build(ckpt: str, pretrained: bool) -> Vit:
    import timm  # 2 s to import: only commands that build this model pay for it

    timm_name, path = parse(ckpt)
    kwargs: dict[str, Any] = {"pretrained_cfg_overlay": {"file": path}} if path else {}
    try:
        model = timm.create_model(timm_name, pretrained=pretrained, num_classes=0, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError, ValueError) as err:
        raise ModelError(f"cannot build DINOv2 model {ckpt!r} ({timm_name}): {err}") from None
    resize(model, IMG_SIZE)
    return TimmTrunkVit("dinov2", ckpt, model, model)


@torch.no_grad()
def resize(model: Trunk, img_size: int) -> None:
    """Set a timm DINOv2 to `img_size` with the official model's position-embedding interpolation.

    The official model resamples at run time with bicubic `scale_factor=(g + 0.1) / M` and no
    antialiasing; timm's own resampling differs slightly, so the result is overwritten.
    """
    n_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    old = model.pos_embed.detach().clone()
    old_grid = model.patch_embed.grid_size[0]
    model.set_input_size(img_size=(img_size, img_size))
    new_grid = model.patch_embed.grid_size[0]
    if new_grid == old_grid:
        return
    dim = old.shape[-1]
    patch = old[:, n_prefix:].float().reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2)
    scale = (new_grid + 0.1) / old_grid
    patch = F.interpolate(patch, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    patch = patch.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim)
    model.pos_embed.copy_(torch.cat([old[:, :n_prefix].float(), patch], dim=1).to(old.dtype))


def transform(ckpt: str) -> Transform:
    parse(ckpt)
    return resize_crop_normalize(256, (IMG_SIZE, IMG_SIZE), IMAGENET_MEAN, IMAGENET_STD)


FAMILY = Family(
    "dinov2",
    "DINOv2 (official weights via timm), at 224 px as the public DINOv2 SAEs",
    "dinov2_vit{s,b,l,g}14 or dinov2_vit{s,b,l,g}14_reg, optionally /PATH to an official .pth file",
    build,
    transform,
)

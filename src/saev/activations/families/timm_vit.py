"""Any timm vision transformer by its timm name, preprocessed with the model's own data config.

`ckpt` is a timm model name with its pretrained tag (`vit_base_patch16_224.augreg_in21k`,
`vit_base_patch14_reg4_dinov2.lvd142m`), `hf-hub:ORG/NAME`, or `NAME/PATH` to load the weights
from a local file instead of downloading them. The model keeps its own input size, classifier
head and token layout ([CLS], registers, patch grid); the transform is timm's evaluation
transform for the model's pretrained data config.
"""

from typing import Any

import torch

from saev.activations.families.base import Family, Transform
from saev.activations.families.timm_trunk import TimmTrunkVit
from saev.activations.vit import Vit
from saev.data.images import to_rgb
from saev.errors import ModelError

CHECKPOINTS = "a timm name with its tag (vit_base_patch16_224.augreg_in21k, vit_base_patch14_reg4_dinov2.lvd142m), hf-hub:ORG/NAME, or NAME/PATH for local weights"


def parse(ckpt: str) -> tuple[str, str | None]:
    """`NAME[/PATH]` -> (timm name, local weights path or None); `hf-hub:` names pass through."""
    if ckpt.startswith("hf-hub:"):
        return ckpt, None
    name, _, path = ckpt.partition("/")
    if not name:
        raise ModelError(
            f"timm checkpoint {ckpt!r}: expected a timm model name, e.g. vit_base_patch16_224.augreg_in21k."
        )
    return name, path or None


def create(ckpt: str, pretrained: bool) -> torch.nn.Module:
    import timm  # 2 s to import: only commands that build timm models pay for it

    name, path = parse(ckpt)
    kwargs: dict[str, Any] = {"pretrained_cfg_overlay": {"file": path}} if path else {}
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ModelError(
                f"timm has no model {name!r}; list vision transformers with timm.list_models('vit_*', pretrained=True)."
            ) from None
        raise ModelError(f"cannot build timm model {ckpt!r}: {err}") from None
    except (FileNotFoundError, OSError, ValueError) as err:
        raise ModelError(f"cannot build timm model {ckpt!r}: {err}") from None


def build(ckpt: str, pretrained: bool) -> Vit:
    model = create(ckpt, pretrained)
    return TimmTrunkVit("timm", ckpt, model, model)


def transform(ckpt: str) -> Transform:
    import timm.data  # see create()
    from torchvision import transforms  # timm's evaluation transforms are torchvision's

    # A randomly initialised model carries the same pretrained data config, without loading weights.
    model = create(ckpt, pretrained=False)
    steps = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)
    return transforms.Compose([to_rgb, *steps.transforms])


FAMILY = Family(
    "timm", "any timm vision transformer, with its own data config", CHECKPOINTS, build, transform
)

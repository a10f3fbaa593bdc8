"""CLIP and SigLIP through OpenCLIP.

`ckpt` is `ARCH/PRETRAINED` (split on the first `/`; PRETRAINED is an OpenCLIP tag or a local
weights file), `hf-hub:ORG/NAME`, or `local-dir:/path` (OpenCLIP's folder with
`open_clip_config.json` and weights). The transform is exactly OpenCLIP's for the checkpoint.
"""

import contextlib
import logging
import types
from collections.abc import Iterator
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from saev.activations.families.base import Family, Transform
from saev.activations.families.timm_trunk import TimmTrunkVit
from saev.activations.vit import TokenLayout, Vit
from saev.errors import ModelError

CHECKPOINTS = "ARCH/PRETRAINED (e.g. ViT-B-16/openai, ViT-B-16/laion2b_s34b_b88k, or ARCH/path/to/weights.bin), hf-hub:ORG/NAME, or local-dir:/path"


def _open_clip() -> types.ModuleType:
    import open_clip  # 3 s to import: only commands that build these models pay for it

    return open_clip


def parse(ckpt: str) -> tuple[str, str | None]:
    """`ARCH/PRETRAINED` -> (ARCH, PRETRAINED); schema names (hf-hub:, local-dir:) pass through."""
    if ckpt.startswith(("hf-hub:", "local-dir:")):
        return ckpt, None
    arch, sep, pretrained = ckpt.partition("/")
    if not sep or not arch or not pretrained:
        raise ModelError(
            f"OpenCLIP checkpoint {ckpt!r}: expected ARCH/PRETRAINED (e.g. ViT-B-16/openai), hf-hub:ORG/NAME or local-dir:/path."
        )
    return arch, pretrained


def create(ckpt: str, mode: Literal["weights", "random", "preprocess"]) -> torch.nn.Module:
    """Build an OpenCLIP model with its weights, with random weights, or only for its preprocessing config.

    "preprocess" skips loading weights but still resolves the pretrained tag, whose mean, std and
    resize mode define the transform.
    """
    name, tag = parse(ckpt)
    open_clip = _open_clip()
    try:
        if mode == "weights":
            return open_clip.create_model(name, tag, require_pretrained=True)
        # OpenCLIP logs a warning on the root logger whenever it skips weights, as asked here.
        with _quiet_root_logger():
            return open_clip.create_model(name, tag if mode == "preprocess" else None, load_weights=False)
    except (RuntimeError, ValueError, FileNotFoundError, OSError) as err:
        raise ModelError(f"cannot build OpenCLIP model {ckpt!r}: {err}") from None


def tokenizer(ckpt: str):
    """The text tokenizer of the checkpoint's model (for zero-shot classification)."""
    name, _ = parse(ckpt)
    return _open_clip().get_tokenizer(name)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class OpenClipVit(Vit):
    """OpenCLIP's own VisionTransformer (CLIP): [CLS] + patches, `ln_pre` before the blocks."""

    model: Any  # open_clip's VisionTransformer; open_clip ships no type information

    def embed(self, x_B3HW: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch tokens d_vit"]:
        return self.model._embeds(x_B3HW)

    def features(self, x_BTD: Float[Tensor, "batch tokens d_vit"]) -> Float[Tensor, "batch tokens d_vit"]:
        return self.model.ln_post(x_BTD)

    def head(self, x_BTD: Float[Tensor, "batch tokens d_vit"]):
        visual = self.model
        pooled, tokens = visual._pool(x_BTD)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return (pooled, tokens) if visual.output_tokens else pooled


def build(family: str, ckpt: str, pretrained: bool) -> Vit:
    # open_clip's VisionTransformer or TimmModel, reached by attribute name (open_clip ships no types).
    visual: Any = create(ckpt, "weights" if pretrained else "random").visual
    if isinstance(visual, _open_clip().timm_model.TimmModel):
        return TimmTrunkVit(family, ckpt, visual, visual.trunk, post_head=visual.head)
    if not hasattr(visual, "transformer"):
        raise ModelError(
            f"OpenCLIP model {ckpt!r} is not a vision transformer (no transformer blocks to record)."
        )
    layout = TokenLayout(
        tuple(visual.grid_size),
        has_cls=True,
        tokens_first=not getattr(visual.transformer, "batch_first", True),
    )
    return OpenClipVit(family, ckpt, visual, visual.transformer.resblocks, layout, visual.transformer.width)


def transform(ckpt: str) -> Transform:
    visual: Any = create(ckpt, "preprocess").visual  # as in build()
    transforms = _open_clip().transform
    return transforms.image_transform_v2(transforms.PreprocessCfg(**visual.preprocess_cfg), is_train=False)


CLIP = Family(
    "clip",
    "CLIP vision towers through OpenCLIP",
    CHECKPOINTS,
    lambda ckpt, pretrained: build("clip", ckpt, pretrained),
    transform,
    text_tower=True,
)
SIGLIP = Family(
    "siglip",
    "SigLIP vision towers through OpenCLIP (no [CLS] token: record with --no-cls-token)",
    "as clip, e.g. ViT-B-16-SigLIP/webli",
    lambda ckpt, pretrained: build("siglip", ckpt, pretrained),
    transform,
    text_tower=True,
)

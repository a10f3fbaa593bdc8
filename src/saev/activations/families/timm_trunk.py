"""A timm `VisionTransformer` behind the `Vit` interface. DINOv2, OpenCLIP's timm-based towers
(SigLIP) and the `timm` family all run on it."""

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from saev.activations.vit import TokenLayout, Vit
from saev.errors import ModelError

# A timm VisionTransformer, or any model with its attributes (`check_trunk`); reached by attribute
# name, as timm's model classes type their submodules only as `torch.nn.Module`.
Trunk = Any


def layout_of(trunk: Trunk) -> TokenLayout:
    """[CLS] (if the model has one) then registers then the patch grid, as timm lays them out."""
    has_cls = getattr(trunk, "cls_token", None) is not None
    rows, cols = trunk.patch_embed.grid_size
    return TokenLayout((int(rows), int(cols)), has_cls, n_registers=trunk.num_prefix_tokens - int(has_cls))


def check_trunk(trunk: torch.nn.Module, name: str) -> None:
    """Refuse timm models whose blocks need more than the token tensor (rope, masks) or that are
    not ViTs at all; they would record fine but not split."""
    needed = ("patch_embed", "_pos_embed", "blocks", "norm", "forward_head", "num_prefix_tokens")
    missing = [attr for attr in needed if not hasattr(trunk, attr)]
    if missing:
        raise ModelError(f"{name}: not a timm VisionTransformer (it lacks {', '.join(missing)}).")


class TimmTrunkVit(Vit):
    """`model` is the timm trunk itself, or a wrapper whose `trunk` attribute it is (`post_head`
    then maps the trunk's output to the wrapper's, as OpenCLIP's projection head does)."""

    def __init__(self, family: str, ckpt: str, model: torch.nn.Module, trunk: Trunk, post_head: Any = None):
        check_trunk(trunk, f"{family}/{ckpt}")
        super().__init__(family, ckpt, model, trunk.blocks, layout_of(trunk), trunk.embed_dim)
        self.trunk = trunk
        self.post_head = post_head

    def embed(self, x_B3HW: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch tokens d_vit"]:
        t = self.trunk
        return t.norm_pre(t.patch_drop(t._pos_embed(t.patch_embed(x_B3HW))))

    def features(self, x_BTD: Float[Tensor, "batch tokens d_vit"]) -> Float[Tensor, "batch tokens d_vit"]:
        return self.trunk.norm(x_BTD)

    def head(self, x_BTD: Float[Tensor, "batch tokens d_vit"]):
        out = self.trunk.forward_head(self.features(x_BTD))
        return out if self.post_head is None else self.post_head(out)

"""The small ViT shipped with saev (`saev.builtin`), trained on `saev.synthetic` concept images."""

from jaxtyping import Float
from torch import Tensor

from saev import builtin
from saev.activations.families.base import Family, Transform
from saev.activations.transforms import resize_crop_normalize
from saev.activations.vit import TokenLayout, Vit


class BuiltinVit(Vit):
    model: builtin.ConceptVit

    def embed(self, x_B3HW: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch tokens d_vit"]:
        return self.model.embed(x_B3HW)

    def head(self, x_BTD: Float[Tensor, "batch tokens d_vit"]) -> Float[Tensor, "batch n_concepts"]:
        return self.model.image_head(self.features(x_BTD)[:, 0])

    def features(self, x_BTD: Float[Tensor, "batch tokens d_vit"]) -> Float[Tensor, "batch tokens d_vit"]:
        return self.model.norm(x_BTD)


def build(ckpt: str, pretrained: bool) -> Vit:
    model = builtin.load(ckpt, pretrained=pretrained)
    layout = TokenLayout((model.grid, model.grid), has_cls=True)
    return BuiltinVit("builtin", ckpt, model, model.blocks, layout, model.width)


def transform(ckpt: str) -> Transform:
    """Images from `saev.synthetic.generate` at the model's size pass the resize and crop unchanged."""
    cfg = builtin.config(ckpt)
    return resize_crop_normalize(cfg.img_size, (cfg.img_size, cfg.img_size), cfg.mean, cfg.std)


FAMILY = Family(
    "builtin",
    "the small ViT shipped with saev, trained on synthetic concept images (offline demos)",
    f"{' or '.join(builtin.NAMES)}",
    build,
    transform,
    concept_heads=True,
)

"""A small plain ViT that predicts the synthetic concepts of each image and of each patch."""

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from saev.synthetic import CONCEPTS


@dataclasses.dataclass(frozen=True)
class VitConfig:
    """Architecture and input normalisation of a built-in ViT."""

    img_size: int = 128
    patch_size: int = 16
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    n_concepts: int = len(CONCEPTS)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    def __post_init__(self):
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}.")
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not a multiple of heads={self.heads}.")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @classmethod
    def from_dict(cls, dct: dict[str, Any]) -> "VitConfig":
        """Inverse of `dataclasses.asdict`, after a JSON round trip turned tuples into lists."""
        return cls(**{**dct, "mean": tuple(dct["mean"]), "std": tuple(dct["std"])})


class Attention(torch.nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)

    def forward(self, x_BTD: Tensor) -> Tensor:
        b, t, d = x_BTD.shape
        qkv_3BHTd = self.qkv(x_BTD).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out_BHTd = F.scaled_dot_product_attention(qkv_3BHTd[0], qkv_3BHTd[1], qkv_3BHTd[2])
        return self.proj(out_BHTd.transpose(1, 2).reshape(b, t, d))


class Block(torch.nn.Module):
    """Pre-norm residual block: its output is the residual stream, as recording expects."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, mlp_ratio * width),
            torch.nn.GELU(),
            torch.nn.Linear(mlp_ratio * width, width),
        )

    def forward(self, x_BTD: Tensor) -> Tensor:
        x_BTD = x_BTD + self.attn(self.norm1(x_BTD))
        return x_BTD + self.mlp(self.norm2(x_BTD))


def hmlp_stem(patch_size: int, width: int) -> torch.nn.Sequential:
    """Hierarchical MLP patch embedding (Touvron et al. 2022, "Three things everyone should know
    about vision transformers"): 4x4, 2x2, 2x2 convolutions whose kernel equals their stride.

    Each token still sees only its own patch, as with a linear patchify, but the nonlinearity lets
    the tiny model learn shape concepts within a CPU budget: with a linear patchify, square patches
    were still undetected (F1 0.02) after 180k training images; with this stem, F1 0.55.
    """
    if patch_size != 16:
        raise ValueError(f"the hMLP stem is built for 16-px patches, not {patch_size}.")
    hidden = width // 4
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, hidden, 4, stride=4),
        torch.nn.GELU(),
        torch.nn.Conv2d(hidden, hidden, 2, stride=2),
        torch.nn.GELU(),
        torch.nn.Conv2d(hidden, width, 2, stride=2),
    )


class ConceptVit(torch.nn.Module):
    """Patch-16 ViT (hMLP stem, pre-norm blocks, [CLS], learned position embeddings), two linear heads.

    Tokens are [CLS] then the patches in row-major order. `forward` returns image-level concept
    logits read from [CLS]; `forward_all` also returns per-patch concept logits, which training
    supervises so that patch tokens carry local concept information.
    """

    def __init__(self, cfg: VitConfig):
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.grid
        self.width = cfg.width
        self.patch_embed = hmlp_stem(cfg.patch_size, cfg.width)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = torch.nn.Parameter(torch.randn(1, 1 + cfg.grid**2, cfg.width) * 0.02)
        self.blocks = torch.nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = torch.nn.LayerNorm(cfg.width)
        self.image_head = torch.nn.Linear(cfg.width, cfg.n_concepts)
        self.patch_head = torch.nn.Linear(cfg.width, cfg.n_concepts)

    def embed(self, x_B3HW: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch tokens width"]:
        """Tokens entering the first block, [batch, 1 + grid**2, width]."""
        patches_BDgg = self.patch_embed(x_B3HW)
        patches_BND = patches_BDgg.flatten(2).transpose(1, 2)
        cls_B1D = self.cls_token.expand(len(x_B3HW), -1, -1)
        return torch.cat([cls_B1D, patches_BND], dim=1) + self.pos_embed

    def tokens(self, x_B3HW: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch tokens width"]:
        """Final normalised tokens, [batch, 1 + grid**2, width]."""
        x_BTD = self.embed(x_B3HW)
        for block in self.blocks:
            x_BTD = block(x_BTD)
        return self.norm(x_BTD)

    def forward_all(
        self, x_B3HW: Float[Tensor, "batch 3 height width"]
    ) -> tuple[Float[Tensor, "batch n_concepts"], Float[Tensor, "batch patches n_concepts"]]:
        """(image logits [batch, n_concepts], patch logits [batch, grid**2, n_concepts])."""
        x_BTD = self.tokens(x_B3HW)
        return self.image_head(x_BTD[:, 0]), self.patch_head(x_BTD[:, 1:])

    def forward(self, x_B3HW: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch n_concepts"]:
        return self.image_head(self.tokens(x_B3HW)[:, 0])

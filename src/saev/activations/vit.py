"""The interface every ViT family implements: residual blocks to hook, the layout of their tokens,
and running the model up to a block and on from the next one.

A `Vit` wraps a family's own model. Its `forward` is the model's own forward; `embed`,
`run_block` and `head` split that forward at block boundaries, so that `run_from(run_to(x, L), L)`
equals `forward(x)`. Families override those three where their models differ.
"""

import dataclasses

import torch
from jaxtyping import Float
from torch import Tensor

from saev.errors import ModelError


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Where tokens sit in a block's output: [CLS] (if any), then registers, then the patches in
    row-major order over the grid."""

    grid: tuple[int, int]
    """Patch rows and columns."""
    has_cls: bool
    n_registers: int = 0
    tokens_first: bool = False
    """Block outputs are [tokens, batch, dim] (old OpenCLIP) instead of [batch, tokens, dim]."""

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def n_prefix(self) -> int:
        """Tokens before the first patch."""
        return int(self.has_cls) + self.n_registers

    def index(self, cls_token: bool) -> Tensor:
        """Token indices kept in a recording: [CLS] (if asked) then every patch, registers dropped."""
        patches = torch.arange(self.n_prefix, self.n_prefix + self.n_patches)
        if cls_token:
            return torch.cat([torch.tensor([0]), patches])
        return patches


class Vit(torch.nn.Module):
    """A vision transformer plus what recording and splicing need: its residual blocks, token
    layout, and its forward pass split at block boundaries."""

    def __init__(
        self,
        family: str,
        ckpt: str,
        model: torch.nn.Module,
        blocks: torch.nn.ModuleList | torch.nn.Sequential,
        layout: TokenLayout,
        d_vit: int,
    ):
        super().__init__()
        self.family, self.ckpt = family, ckpt
        self.model = model
        self.layout = layout
        self.d_vit = d_vit
        self._blocks = blocks

    @property
    def name(self) -> str:
        return f"{self.family}/{self.ckpt}"

    @property
    def blocks(self) -> torch.nn.ModuleList | torch.nn.Sequential:
        """Residual blocks; a hook on block i sees the residual stream after it."""
        return self._blocks

    def forward(self, x_B3HW: Float[Tensor, "batch 3 height width"]):
        return self.model(x_B3HW)

    # The forward pass, split at block boundaries (batch-first tokens throughout).

    def embed(self, x_B3HW: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch tokens d_vit"]:
        """The tokens entering block 0."""
        raise NotImplementedError(f"{self.family} does not split its forward pass")

    def run_block(
        self, i: int, x_BTD: Float[Tensor, "batch tokens d_vit"]
    ) -> Float[Tensor, "batch tokens d_vit"]:
        if self.layout.tokens_first:
            return self.blocks[i](x_BTD.transpose(0, 1)).transpose(0, 1)
        return self.blocks[i](x_BTD)

    def head(self, x_BTD: Float[Tensor, "batch tokens d_vit"]):
        """Everything after the last block (final norm, pooling, projection or classifier)."""
        raise NotImplementedError(f"{self.family} does not split its forward pass")

    def features(self, x_BTD: Float[Tensor, "batch tokens d_vit"]) -> Float[Tensor, "batch tokens d_vit"]:
        """The last block's tokens after the model's final norm: what linear probes read."""
        raise NotImplementedError(f"{self.family} does not expose its final norm")

    def run_to(
        self, x_B3HW: Float[Tensor, "batch 3 height width"], layer: int
    ) -> Float[Tensor, "batch tokens d_vit"]:
        """The residual stream after block `layer` (negative counts from the end); nothing later runs."""
        x_BTD = self.embed(x_B3HW)
        for i in range(self.block_index(layer) + 1):
            x_BTD = self.run_block(i, x_BTD)
        return x_BTD

    def blocks_from(
        self, x_BTD: Float[Tensor, "batch tokens d_vit"], layer: int
    ) -> Float[Tensor, "batch tokens d_vit"]:
        """The last block's output given the residual stream after block `layer`."""
        for i in range(self.block_index(layer) + 1, len(self.blocks)):
            x_BTD = self.run_block(i, x_BTD)
        return x_BTD

    def run_from(self, x_BTD: Float[Tensor, "batch tokens d_vit"], layer: int):
        """The model's output given the residual stream after block `layer`."""
        return self.head(self.blocks_from(x_BTD, layer))

    def block_index(self, layer: int) -> int:
        n = len(self.blocks)
        if not -n <= layer < n:
            raise ModelError(f"layer {layer} out of range: {self.name} has {n} blocks (valid -{n}..{n - 1}).")
        return layer % n

"""Record the residual stream of chosen transformer blocks while a ViT runs."""

import contextlib
from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from saev.activations.vit import Vit
from saev.errors import ModelError


class _StopForward(Exception):
    """Raised by the deepest hook in `record` so no later block runs."""


class RecordedVisionTransformer(torch.nn.Module):
    """Wraps a `Vit` so every call also returns the activations of `layers`.

    `forward(x)` returns `(output, acts)` with `acts` a new tensor shaped
    [batch, len(layers), tokens, d_vit] in the order of `layers` as given (negative indices count
    from the last block). Tokens are [CLS] first (when `cls_token`) then every patch in row-major
    order; register tokens are dropped.
    """

    token_i: Tensor  # a buffer (register_buffer): declared for the type checker

    def __init__(self, vit: Vit, n_patches_per_img: int, cls_token: bool, layers: Sequence[int]):
        super().__init__()
        if not isinstance(vit, Vit):
            raise ModelError(f"expected a ViT from saev.activations.make_vit, got {type(vit).__name__}.")
        layout, n_blocks = vit.layout, len(vit.blocks)
        if n_patches_per_img != layout.n_patches:
            raise ModelError(
                f"{vit.name} sees {layout.n_patches} patches per image "
                f"({layout.grid[0]}x{layout.grid[1]} grid), not n_patches_per_img={n_patches_per_img}."
            )
        if cls_token and not layout.has_cls:
            raise ModelError(f"{vit.name} has no [CLS] token; use cls_token=False.")
        if not layers:
            raise ModelError("layers is empty: give at least one block index to record.")
        bad = [layer for layer in layers if not -n_blocks <= layer < n_blocks]
        if bad:
            raise ModelError(
                f"layers {bad} out of range: {vit.name} has {n_blocks} blocks (valid indices -{n_blocks}..{n_blocks - 1})."
            )
        self.vit = vit
        self.n_patches_per_img = n_patches_per_img
        self.cls_token = cls_token
        self.layers = list(layers)
        self.block_i = [layer % n_blocks for layer in layers]
        self.register_buffer("token_i", layout.index(cls_token), persistent=False)

    @property
    def n_tokens(self) -> int:
        return len(self.token_i)

    def forward(
        self, x_B3HW: Float[Tensor, "batch 3 height width"]
    ) -> tuple[object, Float[Tensor, "batch layers tokens d_vit"]]:
        captured: dict[int, Tensor] = {}
        with self._hooks(captured, stop=False):
            output = self.vit(x_B3HW)
        return output, self._stack(captured)

    def record(
        self, x_B3HW: Float[Tensor, "batch 3 height width"]
    ) -> Float[Tensor, "batch layers tokens d_vit"]:
        """Only the activations; blocks after the deepest requested one are never computed."""
        captured: dict[int, Tensor] = {}
        with self._hooks(captured, stop=True), contextlib.suppress(_StopForward):
            self.vit(x_B3HW)
        return self._stack(captured)

    def _stack(self, captured: dict[int, Tensor]) -> Tensor:
        return torch.stack([captured[b] for b in self.block_i], dim=1)

    @contextlib.contextmanager
    def _hooks(self, captured: dict[int, Tensor], stop: bool) -> Iterator[None]:
        deepest = max(self.block_i)
        tokens_first = self.vit.layout.tokens_first

        def make_hook(block: int):
            def hook(module, args, output):
                out = output[0] if isinstance(output, tuple) else output
                if tokens_first:
                    out = out.transpose(0, 1)
                captured[block] = out.detach().index_select(1, self.token_i)
                if stop and block == deepest:
                    raise _StopForward

            return hook

        handles = [self.vit.blocks[b].register_forward_hook(make_hook(b)) for b in sorted(set(self.block_i))]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

"""ViT families behind one small interface: residual blocks to hook and the layout of their tokens.

`make_vit(family, ckpt)` returns a `Vit`. Families:

- `clip`, `siglip`: OpenCLIP. `ckpt` is `ARCH/PRETRAINED` (split on the first `/`; PRETRAINED is an
  OpenCLIP tag or a local weights file), `hf-hub:ORG/NAME`, or `local-dir:/path` (OpenCLIP's folder
  with `open_clip_config.json` and weights).
- `dinov2`: timm's port of the official weights. `ckpt` is a torch-hub name such as
  `dinov2_vitb14_reg`, optionally `NAME/PATH` to load an official `.pth` file. The position
  embedding is resampled to 224 px exactly as the official model does at run time.
- `builtin`: the small ViT shipped with saev (see `saev.builtin`).
"""

import contextlib
import dataclasses
import logging
import math
import re
from collections.abc import Callable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from saev.errors import ModelError

FAMILIES = ("clip", "siglip", "dinov2", "builtin")


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Where patch tokens sit in a block's output: `n_prefix` tokens ([CLS], registers) come first."""

    n_patches: int
    grid: tuple[int, int]
    n_prefix: int
    has_cls: bool
    tokens_first: bool = False
    """Block outputs are [tokens, batch, dim] (old OpenCLIP) instead of [batch, tokens, dim]."""

    def index(self, cls_token: bool) -> Tensor:
        """Token indices kept in a recording: [CLS] (if asked) then every patch, registers dropped."""
        patches = torch.arange(self.n_prefix, self.n_prefix + self.n_patches)
        if cls_token:
            return torch.cat([torch.tensor([0]), patches])
        return patches


class Vit(torch.nn.Module):
    """A vision transformer plus what recording needs: its residual blocks and token layout."""

    def __init__(
        self,
        family: str,
        ckpt: str,
        model: torch.nn.Module,
        blocks: torch.nn.ModuleList,
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
    def blocks(self) -> torch.nn.ModuleList:
        """Residual blocks; a hook on block i sees the residual stream after it."""
        return self._blocks

    def forward(self, x_B3HW: Tensor):
        return self.model(x_B3HW)


def make_vit(family: str, ckpt: str, *, pretrained: bool = True) -> Vit:
    """Build the ViT of `family` named `ckpt`, in eval mode on the CPU.

    `pretrained=False` builds the same architecture with random weights (tests, debugging).
    """
    builders: dict[str, Callable[..., Vit]] = {
        "clip": _make_open_clip,
        "siglip": _make_open_clip,
        "dinov2": _make_dinov2,
        "builtin": _make_builtin,
    }
    if family not in builders:
        raise ModelError(f"unknown ViT family {family!r}; choose one of {', '.join(FAMILIES)}.")
    return builders[family](family, ckpt, pretrained).eval()


# OpenCLIP


def parse_open_clip(ckpt: str) -> tuple[str, str | None]:
    """`ARCH/PRETRAINED` -> (ARCH, PRETRAINED); schema names (hf-hub:, local-dir:) pass through."""
    if ckpt.startswith(("hf-hub:", "local-dir:")):
        return ckpt, None
    arch, sep, pretrained = ckpt.partition("/")
    if not sep or not arch or not pretrained:
        raise ModelError(
            f"OpenCLIP checkpoint {ckpt!r}: expected ARCH/PRETRAINED (e.g. ViT-B-16/openai), hf-hub:ORG/NAME or local-dir:/path."
        )
    return arch, pretrained


def create_open_clip(ckpt: str, mode: Literal["weights", "random", "preprocess"]) -> torch.nn.Module:
    """Build an OpenCLIP model with its weights, with random weights, or only for its preprocessing config.

    "preprocess" skips loading weights but still resolves the pretrained tag, whose mean, std and
    resize mode define the transform.
    """
    import open_clip

    name, tag = parse_open_clip(ckpt)
    try:
        if mode == "weights":
            return open_clip.create_model(name, tag, require_pretrained=True)
        # OpenCLIP logs a warning on the root logger whenever it skips weights, as asked here.
        with _quiet_root_logger():
            return open_clip.create_model(name, tag if mode == "preprocess" else None, load_weights=False)
    except (RuntimeError, ValueError, FileNotFoundError, OSError) as err:
        raise ModelError(f"cannot build OpenCLIP model {ckpt!r}: {err}") from None


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _make_open_clip(family: str, ckpt: str, pretrained: bool) -> Vit:
    import open_clip

    visual = create_open_clip(ckpt, "weights" if pretrained else "random").visual
    if isinstance(visual, open_clip.timm_model.TimmModel):
        trunk = visual.trunk
        grid = tuple(trunk.patch_embed.grid_size)
        n_prefix = trunk.num_prefix_tokens
        layout = TokenLayout(
            grid[0] * grid[1], grid, n_prefix, has_cls=getattr(trunk, "cls_token", None) is not None
        )
        return Vit(family, ckpt, visual, trunk.blocks, layout, trunk.embed_dim)
    if not hasattr(visual, "transformer"):
        raise ModelError(
            f"OpenCLIP model {ckpt!r} is not a vision transformer (no transformer blocks to record)."
        )
    grid = tuple(visual.grid_size)
    layout = TokenLayout(
        grid[0] * grid[1],
        grid,
        n_prefix=1,
        has_cls=True,
        tokens_first=not getattr(visual.transformer, "batch_first", True),
    )
    return Vit(family, ckpt, visual, visual.transformer.resblocks, layout, visual.transformer.width)


# DINOv2 through timm

_DINOV2 = re.compile(r"^dinov2_vit([sblg])14(_reg)?$")
_DINOV2_SIZES = {"s": "small", "b": "base", "l": "large", "g": "giant"}
DINOV2_IMG_SIZE = 224


def parse_dinov2(ckpt: str) -> tuple[str, str | None]:
    """`dinov2_vitb14_reg[/PATH]` -> (timm model name, local weights path or None)."""
    name, _, path = ckpt.partition("/")
    match = _DINOV2.match(name)
    if match is None:
        raise ModelError(
            f"DINOv2 checkpoint {ckpt!r}: expected a name like dinov2_vitb14 or dinov2_vitb14_reg, optionally followed by /PATH to weights."
        )
    size, reg = match.groups()
    return f"vit_{_DINOV2_SIZES[size]}_patch14{'_reg4' if reg else ''}_dinov2.lvd142m", path or None


def _make_dinov2(family: str, ckpt: str, pretrained: bool) -> Vit:
    import timm

    timm_name, path = parse_dinov2(ckpt)
    kwargs = {"pretrained_cfg_overlay": {"file": path}} if path else {}
    try:
        model = timm.create_model(timm_name, pretrained=pretrained, num_classes=0, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError, ValueError) as err:
        raise ModelError(f"cannot build DINOv2 model {ckpt!r} ({timm_name}): {err}") from None
    resize_dinov2(model, DINOV2_IMG_SIZE)
    grid = tuple(model.patch_embed.grid_size)
    layout = TokenLayout(grid[0] * grid[1], grid, n_prefix=model.num_prefix_tokens, has_cls=True)
    return Vit(family, ckpt, model, model.blocks, layout, model.embed_dim)


@torch.no_grad()
def resize_dinov2(model: torch.nn.Module, img_size: int) -> None:
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


def _make_builtin(family: str, ckpt: str, pretrained: bool) -> Vit:
    from saev import builtin

    model = builtin.load(ckpt, pretrained=pretrained)
    grid = (model.grid, model.grid)
    layout = TokenLayout(model.grid**2, grid, n_prefix=1, has_cls=True)
    return Vit(family, ckpt, model, model.blocks, layout, model.width)


def patch_grid(n_patches: int) -> tuple[int, int]:
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ValueError(f"{n_patches} patches do not form a square grid.")
    return side, side

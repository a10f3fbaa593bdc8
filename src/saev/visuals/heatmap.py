"""Per-patch heatmaps drawn over the exact crop a ViT saw."""

import functools
from collections.abc import Sequence

import numpy as np
from jaxtyping import Bool, Float, Int
from PIL import Image, ImageDraw, ImageFont

CMAP = "plasma"


def overlay(
    crop: Image.Image,
    values_P: Float[np.ndarray, " patches"],
    grid: tuple[int, int],
    vmax: float | None = None,
    alpha: float = 0.75,
) -> Image.Image:
    """Colour each patch of `crop` by its value; zero patches stay see-through.

    `values_P` is in row-major patch order (the ViT's token order). Colour and opacity both grow
    with the value, scaled to `vmax` (default: the largest value).
    """
    import matplotlib  # 0.4 s to import: only commands that draw heatmaps pay for it

    gh, gw = grid
    values = np.asarray(values_P, dtype=np.float32).reshape(gh, gw).clip(min=0)
    top = float(values.max()) if vmax is None else float(vmax)
    scaled = values / top if top > 0 else np.zeros_like(values)
    rgba = matplotlib.colormaps[CMAP](scaled)
    rgba[..., 3] = alpha * scaled  # weak activations stay faint, so the strongest patches stand out
    patch_img = Image.fromarray((rgba * 255).astype(np.uint8), "RGBA").resize(crop.size, Image.NEAREST)
    return Image.alpha_composite(crop.convert("RGBA"), patch_img).convert("RGB")


SPOTLIGHT_FLOOR = 0.3
"""Brightness left to patches where the latent is zero, as a fraction of their own."""
OUTLINE_LEVEL = 0.5
"""`spotlight` outlines the patches at or above this fraction of the scale's top."""


def spotlight_gain(scaled: Float[np.ndarray, "*shape"]) -> Float[np.ndarray, "*shape"]:
    """Brightness factor of a patch at `scaled` (its value over the scale's top, 0 to 1).

    The square root lifts weak activations, which would otherwise look as dark as zero ones."""
    return SPOTLIGHT_FLOOR + (1 - SPOTLIGHT_FLOOR) * np.sqrt(np.clip(scaled, 0, 1))


def spotlight(
    crop: Image.Image,
    values_P: Float[np.ndarray, " patches"],
    grid: tuple[int, int],
    vmax: float | None = None,
) -> Image.Image:
    """`crop` darkened where the latent is weak, with a white outline around its strongest patches.

    Unlike `overlay` it adds no colour, so the object's own colours (often what the latent
    detects) stay visible where it fires. Brightness follows `spotlight_gain` of each patch's
    value over `vmax` (default: the largest value); the outline surrounds the patches at or above
    `OUTLINE_LEVEL` of it.
    """
    gh, gw = grid
    values = np.asarray(values_P, dtype=np.float32).reshape(gh, gw).clip(min=0)
    top = float(values.max()) if vmax is None else float(vmax)
    scaled = values / top if top > 0 else np.zeros_like(values)
    gain = Image.fromarray((spotlight_gain(scaled) * 255).round().astype(np.uint8), "L")
    gain_px = np.asarray(gain.resize(crop.size, Image.NEAREST), dtype=np.float32)[..., None] / 255
    out = Image.fromarray(
        (np.asarray(crop.convert("RGB"), dtype=np.float32) * gain_px).round().astype(np.uint8)
    )
    if top > 0:
        _outline(out, scaled >= OUTLINE_LEVEL)
    return out


def _outline(img: Image.Image, mask: Bool[np.ndarray, "rows cols"]) -> None:
    """Draw the boundary of the `mask` patches on `img`: white over a dark halo, visible on any background."""
    gh, gw = mask.shape
    cw, ch = img.width / gw, img.height / gh
    pad = np.pad(mask, 1)
    across = pad[1:, 1:-1] != pad[:-1, 1:-1]  # (gh + 1, gw): an edge above patch row r, column c
    down = pad[1:-1, 1:] != pad[1:-1, :-1]  # (gh, gw + 1): an edge left of patch row r, column c
    draw = ImageDraw.Draw(img)
    for half, colour in ((2.0, (20, 20, 20)), (1.0, (255, 255, 255))):
        # Rectangles rather than lines: they overlap at the corners, so the outline has no notches.
        for r, c in zip(*np.nonzero(across), strict=True):
            draw.rectangle(
                (c * cw - half, r * ch - half, (c + 1) * cw + half - 1, r * ch + half - 1), fill=colour
            )
        for r, c in zip(*np.nonzero(down), strict=True):
            draw.rectangle(
                (c * cw - half, r * ch - half, c * cw + half - 1, (r + 1) * ch + half - 1), fill=colour
            )


@functools.cache
def label_font() -> ImageFont.FreeTypeFont:
    """DejaVu Sans, which matplotlib ships: Pillow's default font draws spaces 2 px wide."""
    from matplotlib import font_manager

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 11)


def labelled(img: Image.Image, text: str, height: int = 18) -> Image.Image:
    """`img` with a caption strip underneath."""
    out = Image.new("RGB", (img.width, img.height + height), "white")
    out.paste(img, (0, 0))
    ImageDraw.Draw(out).text((3, img.height + 3), text, fill="black", font=label_font())
    return out


def hstack(images: list[Image.Image], gap: int = 4) -> Image.Image:
    width = sum(i.width for i in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (width, max(i.height for i in images)), "white")
    x = 0
    for img in images:
        out.paste(img, (x, 0))
        x += img.width + gap
    return out


def placeholder(size: tuple[int, int], text: str) -> Image.Image:
    """A grey tile standing in for an image that cannot be read."""
    img = Image.new("RGB", size, (200, 200, 200))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(_wrap(text, size[0] // 7)):
        draw.text((6, 6 + 14 * i), line, fill=(60, 60, 60), font=label_font())
    return img


def _wrap(text: str, width: int) -> list[str]:
    width = max(width, 8)
    return [text[i : i + width] for i in range(0, len(text), width)] or [""]


def class_map(
    crop: Image.Image, classes_P: Int[np.ndarray, " patches"], grid: tuple[int, int], alpha: float = 0.6
) -> Image.Image:
    """Colour each patch by its class index (tab20 colours, -1 left see-through)."""
    import matplotlib  # 0.4 s to import: only commands that draw pay for it

    gh, gw = grid
    classes = np.asarray(classes_P).reshape(gh, gw)
    rgba = matplotlib.colormaps["tab20"](np.where(classes >= 0, classes % 20, 0))
    rgba[..., 3] = np.where(classes >= 0, alpha, 0.0)
    patch_img = Image.fromarray((rgba * 255).astype(np.uint8), "RGBA").resize(crop.size, Image.NEAREST)
    return Image.alpha_composite(crop.convert("RGBA"), patch_img).convert("RGB")


def steering_panels(
    crop: Image.Image,
    grid: tuple[int, int],
    edit_size_P: Float[np.ndarray, " patches"],
    before_P: Int[np.ndarray, " patches"] | None = None,
    after_P: Int[np.ndarray, " patches"] | None = None,
    caption: str = "image",
    class_names: Sequence[str] = (),
) -> Image.Image:
    """An edit at a glance: the crop, the size of the change per patch, and (for per-patch heads)
    the class maps before and after (`class_map`, with a legend of `class_names`) and the patches
    whose class changed."""
    tiles = [labelled(crop, caption[:40]), labelled(overlay(crop, edit_size_P, grid), "edit size")]
    if before_P is None or after_P is None:
        return hstack(tiles)
    tiles += [
        labelled(class_map(crop, before_P, grid), "before"),
        labelled(class_map(crop, after_P, grid), "after"),
        labelled(overlay(crop, (before_P != after_P).astype(np.float32), grid), "changed"),
    ]
    present = sorted({int(c) for c in np.concatenate([before_P, after_P]) if c >= 0})
    return _with_legend(
        hstack(tiles), [(class_names[c] if c < len(class_names) else str(c), c) for c in present]
    )


def _with_legend(img: Image.Image, entries: list[tuple[str, int]], row: int = 16) -> Image.Image:
    """`img` with one line per class underneath: its class-map colour and its name."""
    import matplotlib  # 0.4 s to import: only commands that draw pay for it

    out = Image.new("RGB", (img.width, img.height + row * len(entries) + 4), "white")
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    for k, (name, c) in enumerate(entries):
        y = img.height + 4 + row * k
        colour = tuple(int(255 * v) for v in matplotlib.colormaps["tab20"](c % 20)[:3])
        draw.rectangle((3, y, 13, y + 10), fill=colour)
        draw.text((18, y), name, fill="black", font=label_font())
    return out

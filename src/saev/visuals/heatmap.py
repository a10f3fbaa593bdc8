"""Per-patch heatmaps drawn over the exact crop a ViT saw."""

import colorsys
import dataclasses
import functools
from collections.abc import Sequence

import numpy as np
from jaxtyping import Bool, Float, Int
from PIL import Image, ImageColor, ImageDraw, ImageFont

from saev import synthetic

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
    patch_img = Image.fromarray((rgba * 255).astype(np.uint8), "RGBA").resize(
        crop.size, Image.Resampling.NEAREST
    )
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
    gain_px = np.asarray(gain.resize(crop.size, Image.Resampling.NEAREST), dtype=np.float32)[..., None] / 255
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


RGB = tuple[int, int, int]
PALETTE: tuple[RGB, ...] = (
    *((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)),
    *((140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)),
    *((174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213)),
    *((196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229)),
)
"""matplotlib's tab10, then its ten lighter tab20 partners: saturated colours first, so a short
class list gets the most distinct ones."""
_HUE_CLASH = 22.5 / 360
"""Two coloured (not grey) colours closer in hue than this (a fraction of the wheel) read as the same."""
_SATURATED = 0.2
"""HSV saturation above which a colour has a hue worth comparing (tab20's light greys are below)."""
_RGB_CLASH = 80
"""Two colours closer than this in RGB (Euclidean) read as the same whatever their hue."""


def named_colour(name: str) -> RGB | None:
    """The colour a class name names: `red`, `colour:red`, `color:Light Blue`; None for any other name.

    The built-in world's colours (`saev.synthetic.COLOURS`) are its objects' own RGB values;
    other CSS colour names take their CSS value. A prefix other than colour/color (`shape:red`)
    names no colour."""
    prefix, sep, word = name.strip().lower().rpartition(":")
    if sep and prefix not in ("colour", "color"):
        return None
    word = word.replace(" ", "").replace("_", "").replace("-", "")
    if word in synthetic.COLOURS:
        return synthetic.COLOURS[word]
    if not word.isalpha():  # ImageColor also reads "#f00" and "rgb(...)", which are not class names
        return None
    try:
        return ImageColor.getrgb(word)[:3]
    except ValueError:
        return None


def class_colours(class_names: Sequence[str]) -> list[RGB]:
    """One colour per class, for every picture that colours classes.

    A class that names a colour (`named_colour`) is drawn in that colour; the others take
    `PALETTE`'s colours in class order, skipping those that clash with a named colour of the list
    (close hue, or close RGB) while unclashing ones remain, so `colour:red` is never mistaken for
    a red-drawn shape. A given class list always gets the same colours."""
    named = [named_colour(n) for n in class_names]
    taken = [c for c in named if c is not None]
    free = [p for p in PALETTE if not any(_clash(p, t) for t in taken)]
    order = free + [p for p in PALETTE if p not in free]  # clashing ones only once the free ones run out
    others = iter(range(len(class_names)))
    return [c if c is not None else order[next(others) % len(order)] for c in named]


def _clash(a: RGB, b: RGB) -> bool:
    if sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5 < _RGB_CLASH:
        return True
    (ha, sa, _), (hb, sb, _) = (colorsys.rgb_to_hsv(*(v / 255 for v in c)) for c in (a, b))
    gap = abs(ha - hb)
    return sa > _SATURATED and sb > _SATURATED and min(gap, 1 - gap) < _HUE_CLASH


def _names_for(classes: Int[np.ndarray, "..."], class_names: Sequence[str]) -> list[str]:
    """`class_names`, extended with the indices of `classes` beyond it (an unnamed head)."""
    n = max(len(class_names), int(np.max(classes, initial=-1)) + 1)
    return [*class_names, *(str(c) for c in range(len(class_names), n))]


def class_map(
    crop: Image.Image,
    classes_P: Int[np.ndarray, " patches"],
    grid: tuple[int, int],
    class_names: Sequence[str] = (),
    alpha: float = 0.6,
) -> Image.Image:
    """Colour each patch by its class (`class_colours` of `class_names`; -1 left see-through)."""
    gh, gw = grid
    classes = np.asarray(classes_P).reshape(gh, gw)
    colours = np.array(class_colours(_names_for(classes, class_names)) or [(0, 0, 0)], dtype=np.uint8)
    rgba = np.zeros((gh, gw, 4), dtype=np.uint8)
    rgba[..., :3] = colours[np.clip(classes, 0, None)]
    rgba[..., 3] = np.where(classes >= 0, round(255 * alpha), 0)
    patch_img = Image.fromarray(rgba, "RGBA").resize(crop.size, Image.Resampling.NEAREST)
    return Image.alpha_composite(crop.convert("RGBA"), patch_img).convert("RGB")


@dataclasses.dataclass(frozen=True)
class Presence:
    """One class's probability on each patch before and after an edit (a multi-label head's)."""

    name: str
    before_P: Float[np.ndarray, " patches"]
    after_P: Float[np.ndarray, " patches"]


def steering_panels(
    crop: Image.Image,
    grid: tuple[int, int],
    edit_size_P: Float[np.ndarray, " patches"],
    before_P: Int[np.ndarray, " patches"] | None = None,
    after_P: Int[np.ndarray, " patches"] | None = None,
    caption: str = "",
    class_names: Sequence[str] = (),
    *,
    changed_P: Bool[np.ndarray, " patches"] | None = None,
    presence: Presence | None = None,
) -> Image.Image:
    """An edit at a glance: the crop, the size of the change per patch, and (for per-patch heads)
    the top-class maps before and after (`class_map`), the `presence` of one class before and after
    (bright and outlined where predicted, dark where absent), and the changed patches. `caption`'s
    lines go underneath (an image head's predictions before and after).

    `changed_P` should be the head's own changed units (`Head.changed`, what `saev steer` reports);
    without it the last panel shows the patches whose top class differs between the two maps."""
    tiles = [labelled(crop, "image"), labelled(overlay(crop, edit_size_P, grid), "edit size")]
    lines = caption.splitlines()
    if before_P is None or after_P is None:
        return _with_legend(hstack(tiles), [], lines)
    tiles += [
        labelled(class_map(crop, before_P, grid, class_names), "top class before"),
        labelled(class_map(crop, after_P, grid, class_names), "top class after"),
    ]
    notes = lines
    if presence is not None:
        short = presence.name[-18:]
        tiles += [
            labelled(spotlight(crop, presence.before_P, grid, vmax=1.0), f"{short} before"),
            labelled(spotlight(crop, presence.after_P, grid, vmax=1.0), f"{short} after"),
        ]
        notes.append(
            f"{presence.name} before/after: bright where the head gives it probability, outlined where "
            f"it predicts it (p >= 0.5); {int((presence.before_P >= 0.5).sum())} -> "
            f"{int((presence.after_P >= 0.5).sum())} patches"
        )
    if changed_P is None:
        changed_P, what = before_P != after_P, "top class changed"
    else:
        what = "changed"
        notes.append(f"changed: the {int(changed_P.sum())} patches whose predicted classes changed")
    tiles.append(labelled(overlay(crop, np.asarray(changed_P, dtype=np.float32), grid), what))
    names = _names_for(np.concatenate([before_P, after_P]), class_names)
    colours = class_colours(names)
    present = sorted({int(c) for c in np.concatenate([before_P, after_P]) if c >= 0})
    return _with_legend(hstack(tiles), [(names[c], colours[c]) for c in present], notes)


def _with_legend(
    img: Image.Image, entries: list[tuple[str, RGB]], notes: Sequence[str] = (), row: int = 16
) -> Image.Image:
    """`img` with one line per class underneath (its colour and its name), then `notes`; widened
    where a line is longer than `img` is wide."""
    font = label_font()
    width = max(
        [
            img.width,
            *(18 + font.getlength(n) + 6 for n, _ in entries),
            *(font.getlength(n) + 9 for n in notes),
        ]
    )
    out = Image.new("RGB", (int(width), img.height + row * (len(entries) + len(notes)) + 4), "white")
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    for k, (name, colour) in enumerate(entries):
        y = img.height + 4 + row * k
        draw.rectangle((3, y, 13, y + 10), fill=colour, outline=(80, 80, 80))
        draw.text((18, y), name, fill="black", font=font)
    for k, note in enumerate(notes):
        draw.text((3, img.height + 4 + row * (len(entries) + k)), note, fill="black", font=font)
    return out

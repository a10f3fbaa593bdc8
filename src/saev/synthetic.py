"""Synthetic concept images whose ground truth is known down to the pixel.

Every image shows 1-3 non-overlapping objects on a low-saturation background. Each object has
one shape (circle, square, triangle, star), one colour (red, green, blue, yellow, purple) and one
texture (solid, stripes, dots); these twelve values are the ground-truth `CONCEPTS`. Position,
size, rotation, exact hue, texture phase and the background (plain, gradient or noisy grey) vary
but are nuisance factors, not concepts. Backgrounds are slightly tinted greys, so no background
can be mistaken for a (saturated) object colour.

Objects never overlap (a gap of `min_gap` separates their circumscribed circles), so every
object pixel belongs to exactly one object and each object is fully visible. Shapes are drawn
without anti-aliasing, so the per-pixel object-id mask is exact: `object_mask(record)` redraws it
from the recorded geometry with the very code that painted the image.

A patch has a concept when at least `PATCH_THRESHOLD` (25%) of its pixels belong to objects that
have the concept (`patch_concepts`). An image has a concept when any of its objects has it.

Everything is a pure function of the seed: image `i` of seed `s` is drawn from its own generator
seeded with `(s, i)`, so any image can be regenerated alone, and `render(record)` reproduces the
image bytes from its label record.
"""

import dataclasses
import math
import os
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from saev.errors import ConfigError
from saev.fileio import read_json, save_image, write_json

SHAPES = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 35),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 205, 30),
    "purple": (150, 50, 195),
}
TEXTURES = ("solid", "stripes", "dots")
BACKGROUNDS = ("plain", "gradient", "noise")

CONCEPTS: tuple[str, ...] = (
    *(f"shape:{s}" for s in SHAPES),
    *(f"colour:{c}" for c in COLOURS),
    *(f"texture:{t}" for t in TEXTURES),
)
"""Ground-truth concept names, in the order of every concept axis in this module."""

HIERARCHY: dict[str, tuple[str, ...]] = {
    "shape:polygon": ("shape:square", "shape:triangle", "shape:star"),
    "colour:warm": ("colour:red", "colour:yellow"),
    "colour:cool": ("colour:green", "colour:blue", "colour:purple"),
    "texture:patterned": ("texture:stripes", "texture:dots"),
}
"""Parent concepts over the concepts: each parent is any of its children, so an object has it
exactly when it has one of them. The ground truth of absorption tests (`saev bench`)."""

PATCH_THRESHOLD = 0.25
"""Fraction of a patch's pixels that must belong to objects with a concept for the patch to have it."""

LABELS_FORMAT = "saev-synthetic/1"

# Colours are jittered per object so a colour is a region of RGB space, not one exact value.
_COLOUR_JITTER = 20
# Texture marks are the object's colour darkened: the colour stays recognisable on every pixel.
_SHADE = 0.4
_STAR_INNER = 0.45
# Angle of the first vertex of an upright shape; y points down, so -90 degrees is straight up.
_UPRIGHT = {"square": 45.0, "triangle": -90.0, "star": -90.0}
# Uniform integer noise (std ~10 levels): several times cheaper to draw than Gaussian noise.
_NOISE_AMPLITUDE = 17
# Greys, tinted by at most this much per channel, keep backgrounds far from saturated objects.
_GREY_TINT = 8
_MIN_GRADIENT_CONTRAST = 60
_PLACEMENT_TRIES = 50


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Lengths are fractions of the image side unless named `_px`."""

    size: int = 128
    """Image side in pixels; generate at exactly the model's resolution so its transform is a no-op."""
    n_objects: tuple[int, int] = (1, 3)
    """Inclusive range of objects per image (fewer when they cannot be placed without overlap)."""
    radius: tuple[float, float] = (0.11, 0.24)
    """Range of circumscribed radii; 14-30 px at 128 px, so every object spans 2-4 patches of 16 px."""
    min_gap: float = 0.02
    """Minimum distance between two objects' circumscribed circles."""
    max_rotation: float = 15.0
    """Objects turn up to this many degrees either way from upright: squares stay squares, not diamonds."""
    texture_period_px: int = 6
    """Period of stripes and dots: several repeats fit in one 16-px patch."""

    def __post_init__(self):
        lo, hi = self.n_objects
        if not 1 <= lo <= hi:
            raise ValueError(f"n_objects={self.n_objects}: need 1 <= min <= max.")
        if not 0 < self.radius[0] <= self.radius[1] < 0.5:
            raise ValueError(f"radius={self.radius}: need 0 < min <= max < 0.5 (fraction of the side).")
        if self.size < 16 or self.texture_period_px < 2:
            raise ValueError(f"size={self.size}, texture_period_px={self.texture_period_px}: too small.")


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One object: its concepts, and the geometry and paint needed to redraw it exactly."""

    shape: str
    colour: str
    texture: str
    cx: float
    cy: float
    radius: float
    """Circumscribed radius in pixels."""
    angle: float
    """Rotation from upright in degrees (ignored for circles)."""
    rgb: tuple[int, int, int]
    """The jittered colour actually painted."""
    texture_angle: float
    """Stripe direction in degrees (stripes only)."""
    texture_offset: tuple[float, float]
    """Phase of the stripes or dot lattice, in pixels."""

    @property
    def concepts(self) -> tuple[str, str, str]:
        return f"shape:{self.shape}", f"colour:{self.colour}", f"texture:{self.texture}"


@dataclasses.dataclass(frozen=True)
class Background:
    """A nuisance factor, not a concept: everything needed to repaint it."""

    kind: str
    """plain, gradient (rgb to rgb2 along `angle`) or noise (plain plus uniform per-pixel noise)."""
    rgb: tuple[int, int, int]
    rgb2: tuple[int, int, int]
    angle: float
    noise_seed: int


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """The label of one image: everything needed to redraw it and derive its concepts."""

    index: int
    size: int
    background: Background
    objects: tuple[SceneObject, ...]
    texture_period_px: int
    file: str = ""
    """Path of the PNG relative to the dataset root; empty for images never written."""

    @property
    def concepts(self) -> tuple[str, ...]:
        present = {c for obj in self.objects for c in obj.concepts}
        return tuple(c for c in CONCEPTS if c in present)

    def to_dict(self) -> dict[str, Any]:
        dct = dataclasses.asdict(self)
        dct["concepts"] = list(self.concepts)
        return dct

    @classmethod
    def from_dict(cls, dct: Mapping[str, Any]) -> "ImageRecord":
        """The record written by `to_dict`; ValueError (or KeyError, TypeError) when it is not one."""
        record = cls._parse(dct)
        if record.size < 1 or record.texture_period_px < 1:
            raise ValueError(f"image {record.index}: size and texture period must be positive.")
        for obj in record.objects:
            if obj.shape not in SHAPES or obj.colour not in COLOURS or obj.texture not in TEXTURES:
                raise ValueError(f"image {record.index}: unknown concepts {obj.concepts}.")
        if record.background.kind not in BACKGROUNDS:
            raise ValueError(f"image {record.index}: unknown background {record.background.kind!r}.")
        return record

    @classmethod
    def _parse(cls, dct: Mapping[str, Any]) -> "ImageRecord":
        bg = dct["background"]
        return cls(
            index=int(dct["index"]),
            size=int(dct["size"]),
            background=Background(
                kind=bg["kind"],
                rgb=tuple(bg["rgb"]),
                rgb2=tuple(bg["rgb2"]),
                angle=float(bg["angle"]),
                noise_seed=int(bg["noise_seed"]),
            ),
            objects=tuple(
                SceneObject(
                    **{**obj, "rgb": tuple(obj["rgb"]), "texture_offset": tuple(obj["texture_offset"])}
                )
                for obj in dct["objects"]
            ),
            texture_period_px=int(dct["texture_period_px"]),
            file=dct.get("file", ""),
        )


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A generated image folder: `root/images/*.png` plus `root/labels.json`."""

    root: pathlib.Path
    records: tuple[ImageRecord, ...]

    @property
    def labels_path(self) -> pathlib.Path:
        return self.root / "labels.json"

    @property
    def image_paths(self) -> list[pathlib.Path]:
        return [self.root / r.file for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def image_labels(self) -> np.ndarray:
        """[n_images, n_concepts] bool."""
        return np.stack([image_concepts(r) for r in self.records]).reshape(len(self), len(CONCEPTS))

    def patch_labels(self, grid: tuple[int, int]) -> np.ndarray:
        """[n_images, gh * gw, n_concepts] bool, patches in a ViT's row-major token order."""
        rows = [patch_rows(r, grid) for r in self.records]
        return np.stack(rows).reshape(len(self), grid[0] * grid[1], len(CONCEPTS))


# Sampling


def sample_record(seed: int, index: int, cfg: SceneConfig = SceneConfig()) -> ImageRecord:
    """Draw the scene of image `index` for `seed`; independent of every other image."""
    rng = np.random.default_rng([seed, index])
    background = _sample_background(rng)
    n_wanted = int(rng.integers(cfg.n_objects[0], cfg.n_objects[1] + 1))
    objects: list[SceneObject] = []
    for _ in range(n_wanted):
        obj = _place_object(rng, cfg, objects)
        if obj is not None:
            objects.append(obj)
    return ImageRecord(index, cfg.size, background, tuple(objects), cfg.texture_period_px)


def sample_records(seed: int, n_images: int, cfg: SceneConfig = SceneConfig()) -> Iterator[ImageRecord]:
    for i in range(n_images):
        yield sample_record(seed, i, cfg)


def _grey(rng: np.random.Generator, lo: int = 20, hi: int = 236) -> tuple[int, int, int]:
    level = int(rng.integers(lo, hi))
    tint = rng.integers(-_GREY_TINT, _GREY_TINT + 1, size=3)
    return _rgb(level + tint)


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    """Three channel values clipped to 0..255, as Python ints."""
    r, g, b = (int(v) for v in np.clip(values, 0, 255))
    return r, g, b


def _xy(values: np.ndarray) -> tuple[float, float]:
    x, y = (float(v) for v in values)
    return x, y


def _sample_background(rng: np.random.Generator) -> Background:
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    rgb = _grey(rng)
    rgb2 = rgb
    if kind == "gradient":
        # Resample until the two ends differ enough for the gradient to be visible.
        while abs(sum(rgb2) - sum(rgb)) < 3 * _MIN_GRADIENT_CONTRAST:
            rgb2 = _grey(rng)
    angle = float(rng.uniform(0, 360))
    return Background(kind, rgb, rgb2, angle, int(rng.integers(2**31)))


def _place_object(
    rng: np.random.Generator, cfg: SceneConfig, placed: list[SceneObject]
) -> SceneObject | None:
    """A random object that fits inside the image and keeps `min_gap` from the others, or None."""
    side = cfg.size
    radius = float(rng.uniform(*cfg.radius)) * side
    gap = cfg.min_gap * side
    for _ in range(_PLACEMENT_TRIES):
        cx, cy = (float(v) for v in rng.uniform(radius, side - radius, size=2))
        if all(math.hypot(cx - o.cx, cy - o.cy) >= radius + o.radius + gap for o in placed):
            break
    else:
        return None
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
    return SceneObject(
        shape=SHAPES[int(rng.integers(len(SHAPES)))],
        colour=colour,
        texture=TEXTURES[int(rng.integers(len(TEXTURES)))],
        cx=cx,
        cy=cy,
        radius=radius,
        angle=float(rng.uniform(-cfg.max_rotation, cfg.max_rotation)),
        rgb=_rgb(np.array(COLOURS[colour]) + jitter),
        texture_angle=float(rng.choice([0.0, 45.0, 90.0, 135.0])),
        texture_offset=_xy(rng.uniform(0, cfg.texture_period_px, size=2)),
    )


# Rendering


def _polygon(obj: SceneObject) -> list[tuple[float, float]]:
    """Vertices of a square, triangle or star inscribed in the object's circle."""
    if obj.shape == "star":
        n, radii = 10, [obj.radius, obj.radius * _STAR_INNER]
    else:
        n, radii = {"square": 4, "triangle": 3}[obj.shape], [obj.radius]
    start = math.radians(obj.angle + _UPRIGHT[obj.shape])
    return [
        (
            obj.cx + radii[k % len(radii)] * math.cos(start + 2 * math.pi * k / n),
            obj.cy + radii[k % len(radii)] * math.sin(start + 2 * math.pi * k / n),
        )
        for k in range(n)
    ]


def object_mask(record: ImageRecord) -> np.ndarray:
    """[size, size] uint8: 0 for background, k + 1 for pixels of `record.objects[k]`."""
    mask = Image.new("L", (record.size, record.size), 0)
    draw = ImageDraw.Draw(mask)
    for k, obj in enumerate(record.objects):
        if obj.shape == "circle":
            r = obj.radius
            draw.ellipse((obj.cx - r, obj.cy - r, obj.cx + r, obj.cy + r), fill=k + 1)
        else:
            draw.polygon(_polygon(obj), fill=k + 1)
    return np.asarray(mask)


def _texture_marks(obj: SceneObject, period: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Boolean map of the darkened pixels of a textured object, over pixel-index grids yy, xx."""
    ox, oy = obj.texture_offset
    if obj.texture == "stripes":
        theta = math.radians(obj.texture_angle)
        along = (xx + ox) * math.cos(theta) + (yy + oy) * math.sin(theta)
        return np.mod(along, period) < period / 2
    if obj.texture == "dots":
        dx = np.mod(xx + ox, period) - period / 2
        dy = np.mod(yy + oy, period) - period / 2
        return dx * dx + dy * dy <= (period * 0.3) ** 2
    return np.zeros(np.broadcast_shapes(yy.shape, xx.shape), dtype=bool)


def _background(bg: Background, size: int) -> np.ndarray:
    """[size, size, 3] float32 background."""
    rgb = np.asarray(bg.rgb, dtype=np.float32)
    if bg.kind == "gradient":
        theta = math.radians(bg.angle)
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        proj = coords[None, :] * math.cos(theta) + coords[:, None] * math.sin(theta)
        t = (proj - proj.min()) / (proj.max() - proj.min())
        return rgb + t[..., None] * (np.asarray(bg.rgb2, dtype=np.float32) - rgb)
    img = np.broadcast_to(rgb, (size, size, 3)).copy()
    if bg.kind == "noise":
        noise_rng = np.random.default_rng(bg.noise_seed)
        img += noise_rng.integers(-_NOISE_AMPLITUDE, _NOISE_AMPLITUDE + 1, (size, size, 3), dtype=np.int16)
    return img


def render(record: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
    """Paint the image of `record`: ([size, size, 3] uint8 RGB, [size, size] uint8 object mask)."""
    size = record.size
    mask = object_mask(record)
    img = _background(record.background, size)
    yy, xx = np.ogrid[:size, :size]
    for k, obj in enumerate(record.objects):
        # Textures are evaluated only inside the object's bounding box: most of the image is background.
        r = math.ceil(obj.radius) + 2
        y0, y1 = max(0, int(obj.cy) - r), min(size, int(obj.cy) + r + 1)
        x0, x1 = max(0, int(obj.cx) - r), min(size, int(obj.cx) + r + 1)
        inside = mask[y0:y1, x0:x1] == k + 1
        marks = _texture_marks(obj, record.texture_period_px, yy[y0:y1], xx[:, x0:x1])
        colour = np.asarray(obj.rgb, dtype=np.float32)
        box = img[y0:y1, x0:x1]
        box[inside] = colour
        box[inside & marks] = colour * _SHADE
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


# Labels


def _concept_matrix(record: ImageRecord) -> np.ndarray:
    """[n_objects, n_concepts] bool: which concepts each object has."""
    index = {c: i for i, c in enumerate(CONCEPTS)}
    mat = np.zeros((len(record.objects), len(CONCEPTS)), dtype=bool)
    for k, obj in enumerate(record.objects):
        mat[k, [index[c] for c in obj.concepts]] = True
    return mat


def image_concepts(record: ImageRecord | Mapping[str, Any]) -> np.ndarray:
    """[n_concepts] bool: the concepts of any object in the image."""
    record = _as_record(record)
    # numpy's stubs type any(axis=...) as possibly a scalar; over axis 0 of a 2-D array it is an array.
    return _concept_matrix(record).any(axis=0)  # type: ignore[return-value]


def patch_coverage(
    record: ImageRecord | Mapping[str, Any], grid: tuple[int, int], mask: np.ndarray | None = None
) -> np.ndarray:
    """[n_concepts, gh, gw] float: fraction of each patch's pixels on objects with each concept.

    Pass `mask` (from `render`) to skip redrawing it.
    """
    record = _as_record(record)
    frac_Ogg = _object_coverage(record, grid, mask)
    # Objects never overlap, so concept coverage is the sum of its objects' coverage.
    return np.einsum("oc,ohw->chw", _concept_matrix(record).astype(np.float64), frac_Ogg)


def _object_coverage(record: ImageRecord, grid: tuple[int, int], mask: np.ndarray | None) -> np.ndarray:
    """[n_objects, gh, gw] float: fraction of each patch's pixels on each object."""
    gh, gw = grid
    if record.size % gh or record.size % gw:
        raise ValueError(f"a {gh}x{gw} grid does not tile a {record.size}-px image into whole patches.")
    if mask is None:
        mask = object_mask(record)
    ph, pw = record.size // gh, record.size // gw
    n_obj = len(record.objects)
    onehot_OHW = mask[None] == np.arange(1, n_obj + 1, dtype=np.uint8)[:, None, None]
    return onehot_OHW.reshape(n_obj, gh, ph, gw, pw).mean(axis=(2, 4))


def object_patches(
    record: ImageRecord | Mapping[str, Any],
    grid: tuple[int, int],
    threshold: float = PATCH_THRESHOLD,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """[n_objects, gh * gw] bool: the patches (row-major) each object covers by >= `threshold`."""
    record = _as_record(record)
    return (_object_coverage(record, grid, mask) >= threshold).reshape(len(record.objects), -1)


def patch_concepts(
    record: ImageRecord | Mapping[str, Any],
    grid: tuple[int, int],
    threshold: float = PATCH_THRESHOLD,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """[n_concepts, gh, gw] bool: a patch has a concept when >= `threshold` of its pixels do."""
    return patch_coverage(record, grid, mask) >= threshold


def patch_rows(
    record: ImageRecord | Mapping[str, Any], grid: tuple[int, int], mask: np.ndarray | None = None
) -> np.ndarray:
    """[gh * gw, n_concepts] bool: `patch_concepts` with patches in a ViT's row-major token order."""
    return patch_concepts(record, grid, mask=mask).reshape(len(CONCEPTS), -1).T


def _as_record(record: ImageRecord | Mapping[str, Any]) -> ImageRecord:
    return record if isinstance(record, ImageRecord) else ImageRecord.from_dict(record)


# Writing and reading image folders


def generate(
    out_dir: str | os.PathLike,
    n_images: int,
    *,
    seed: int = 0,
    size: int = 128,
    cfg: SceneConfig | None = None,
) -> Dataset:
    """Write `n_images` PNGs to `out_dir/images/` and their labels to `out_dir/labels.json`.

    `cfg` overrides the scene settings (its `size` wins over `size`).
    """
    if n_images < 0:
        raise ValueError(f"n_images={n_images} must be >= 0.")
    cfg = cfg or SceneConfig(size=size)
    root = pathlib.Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(n_images - 1)))
    records = []
    for record in sample_records(seed, n_images, cfg):
        record = dataclasses.replace(record, file=f"images/{record.index:0{width}d}.png")
        img, _ = render(record)
        # Low zlib effort: PNG stays lossless, and thousands of images write in seconds.
        save_image(root / record.file, Image.fromarray(img), compress_level=1)
        records.append(record)
    labels = {
        "format": LABELS_FORMAT,
        "seed": seed,
        "config": dataclasses.asdict(cfg),
        "concepts": list(CONCEPTS),
        "patch_threshold": PATCH_THRESHOLD,
        "images": [r.to_dict() for r in records],
    }
    write_json(root / "labels.json", labels, indent=None)
    return Dataset(root, tuple(records))


def load(root: str | os.PathLike) -> Dataset:
    """Read a folder written by `generate`."""
    root = pathlib.Path(root)
    path = root / "labels.json"
    labels = read_json(path, "labels file")
    if not isinstance(labels, dict) or labels.get("format") != LABELS_FORMAT:
        raise ConfigError(f"{path}: not a {LABELS_FORMAT} labels file.")
    if tuple(labels.get("concepts", ())) != CONCEPTS:
        raise ConfigError(f"{path}: written with other concepts {labels.get('concepts')}.")
    try:
        return Dataset(root, tuple(ImageRecord.from_dict(r) for r in labels["images"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: malformed image record ({type(err).__name__}: {err}).") from None

"""One class palette for every picture: a class that names a colour is drawn in it, the others in
distinct palette colours that do not look like those named colours."""

import colorsys

import numpy as np
import pytest
from PIL import Image

from saev import synthetic
from saev.visuals.heatmap import PALETTE, class_colours, class_map, named_colour, steering_panels


@pytest.mark.parametrize(
    "name,rgb",
    [
        ("colour:red", synthetic.COLOURS["red"]),
        ("red", synthetic.COLOURS["red"]),
        ("color:blue", synthetic.COLOURS["blue"]),
        ("Colour:Purple", synthetic.COLOURS["purple"]),
        ("colour:light blue", (173, 216, 230)),  # CSS names beyond the built-in world's
        ("orange", (255, 165, 0)),
        ("shape:red", None),  # another axis's value, not a colour
        ("shape:circle", None),
        ("cat", None),
        ("#ff0000", None),
    ],
)
def test_named_colours(name, rgb):
    assert named_colour(name) == rgb


def hue_gap(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    ha, hb = (colorsys.rgb_to_hsv(*(v / 255 for v in c))[0] for c in (a, b))
    return 360 * min(abs(ha - hb), 1 - abs(ha - hb))


def saturation(c: tuple[int, int, int]) -> float:
    return colorsys.rgb_to_hsv(*(v / 255 for v in c))[1]


def test_the_builtin_concepts_get_their_colours_and_distinct_unclashing_others():
    colours = class_colours(synthetic.CONCEPTS)
    assert colours == class_colours(list(synthetic.CONCEPTS))  # stable
    named = {c: colours[synthetic.CONCEPTS.index(f"colour:{c}")] for c in synthetic.COLOURS}
    assert named == synthetic.COLOURS  # colour:red is drawn in the built-in world's red
    others = [
        col for name, col in zip(synthetic.CONCEPTS, colours, strict=True) if not name.startswith("colour:")
    ]
    assert len(set(colours)) == len(colours) == 12
    for col in others:
        assert col in PALETTE
        for rgb in synthetic.COLOURS.values():
            # No shape or texture reads as one of the colours: a hue far from each, or nearly grey.
            assert hue_gap(col, rgb) > 20 or saturation(col) < 0.2, (col, rgb)
    # Without colour classes the palette is used in order.
    assert class_colours(["cat", "dog", "rocket"]) == list(PALETTE[:3])
    # Once the unclashing colours run out, clashing ones are used before any repeats.
    many = class_colours([*synthetic.CONCEPTS, *(f"other{i}" for i in range(20))])
    assert len(set(many[12 : 12 + len(PALETTE) - 7])) == len(PALETTE) - 7


def test_class_maps_and_legends_use_the_palette():
    crop = Image.new("RGB", (128, 128), (255, 255, 255))
    red = synthetic.CONCEPTS.index("colour:red")
    star = synthetic.CONCEPTS.index("shape:star")
    classes_P = np.full(64, -1)
    classes_P[0], classes_P[63] = red, star
    rgb = np.asarray(class_map(crop, classes_P, (8, 8), synthetic.CONCEPTS)).astype(int)
    colours = class_colours(synthetic.CONCEPTS)
    for (y, x), c in (((4, 4), red), ((124, 124), star)):
        want = 0.4 * 255 + 0.6 * np.array(colours[c])
        assert np.abs(rgb[y, x] - want).max() <= 1
    assert (rgb[64, 64] == 255).all()  # no class: see-through
    # The legend's swatches, in class order under the panels.
    img = steering_panels(crop, (8, 8), np.zeros(64), classes_P, classes_P, class_names=synthetic.CONCEPTS)
    panels_h = 128 + 18
    swatches = np.asarray(img).astype(int)[[panels_h + 4 + 5, panels_h + 4 + 16 + 5], 8]
    assert [tuple(s) for s in swatches] == [colours[star], colours[red]]

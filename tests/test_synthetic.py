"""The synthetic concept generator: determinism, exact masks and patch labels, label vocabulary."""

import json

import numpy as np
import pytest
from PIL import Image

from saev import synthetic
from saev.synthetic import CONCEPTS, Background, ImageRecord, SceneObject


@pytest.fixture(scope="module")
def records() -> list[ImageRecord]:
    return list(synthetic.sample_records(seed=7, n_images=200))


def _files(dataset: synthetic.Dataset) -> list[bytes]:
    return [p.read_bytes() for p in dataset.image_paths]


def test_same_seed_gives_identical_files(tmp_path):
    a = synthetic.generate(tmp_path / "a", 6, seed=3)
    b = synthetic.generate(tmp_path / "b", 6, seed=3)
    c = synthetic.generate(tmp_path / "c", 6, seed=4)
    assert _files(a) == _files(b)
    assert a.labels_path.read_bytes() == b.labels_path.read_bytes()
    assert all(x != y for x, y in zip(_files(a), _files(c), strict=True))
    assert a.records != c.records


def test_image_i_does_not_depend_on_how_many_are_generated(tmp_path):
    few = synthetic.generate(tmp_path / "few", 3, seed=1)
    many = synthetic.generate(tmp_path / "many", 10, seed=1)
    assert _files(few) == _files(many)[:3]


def test_counts_files_and_labels_round_trip(tmp_path):
    dataset = synthetic.generate(tmp_path, 7, seed=0, size=96)
    assert len(dataset) == 7
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"{i:06d}.png" for i in range(7)]
    labels = json.loads(dataset.labels_path.read_text())
    assert labels["concepts"] == list(CONCEPTS)
    assert labels["patch_threshold"] == synthetic.PATCH_THRESHOLD
    assert [r["index"] for r in labels["images"]] == list(range(7))
    assert labels["images"][0]["concepts"] == list(dataset.records[0].concepts)
    assert synthetic.load(tmp_path).records == dataset.records
    for record, path in zip(dataset.records, dataset.image_paths, strict=True):
        with Image.open(path) as img:
            assert img.mode == "RGB" and img.size == (96, 96)
            # The PNG is lossless: the label record alone reproduces the pixels.
            np.testing.assert_array_equal(np.asarray(img), synthetic.render(record)[0])


def test_label_matrices_follow_token_order(tmp_path):
    dataset = synthetic.generate(tmp_path, 5, seed=2)
    patches = dataset.patch_labels((8, 8))
    assert patches.shape == (5, 64, len(CONCEPTS)) and patches.dtype == bool
    for i, record in enumerate(dataset.records):
        grid_labels = synthetic.patch_concepts(record, (8, 8))
        for gy, gx in [(0, 0), (2, 5), (7, 3)]:
            np.testing.assert_array_equal(patches[i, gy * 8 + gx], grid_labels[:, gy, gx])
    # A concept on some patch is a concept of the image.
    assert not (patches.any(1) & ~dataset.image_labels()).any()
    assert dataset.image_labels()[0].tolist() == [c in dataset.records[0].concepts for c in CONCEPTS]


def test_zero_images_writes_empty_labels(tmp_path):
    assert len(synthetic.generate(tmp_path, 0)) == 0
    assert json.loads((tmp_path / "labels.json").read_text())["images"] == []


def test_mask_marks_exactly_the_painted_object_pixels(records):
    for record in records[:40]:
        img, mask = synthetic.render(record)
        for k, obj in enumerate(record.objects):
            pixels = img[mask == k + 1].astype(int)
            assert len(pixels) > 0
            shade = np.rint(np.array(obj.rgb) * 0.4).astype(int)
            is_colour = (pixels == obj.rgb).all(1)
            is_shade = (pixels == shade).all(1)
            assert (is_colour | is_shade).all()
            assert is_colour.any()
            assert is_shade.any() == (obj.texture != "solid")
        # No background pixel has an object's exact colour (backgrounds are greys).
        background = img[mask == 0].astype(int)
        for obj in record.objects:
            assert not (background == obj.rgb).all(1).any()


def _brute_force_patch_concepts(record: ImageRecord, grid: tuple[int, int]) -> np.ndarray:
    mask = synthetic.object_mask(record)
    ph, pw = record.size // grid[0], record.size // grid[1]
    out = np.zeros((len(CONCEPTS), *grid), dtype=bool)
    for gy in range(grid[0]):
        for gx in range(grid[1]):
            counts = {c: 0 for c in CONCEPTS}
            for y in range(gy * ph, (gy + 1) * ph):
                for x in range(gx * pw, (gx + 1) * pw):
                    if mask[y, x]:
                        for c in record.objects[mask[y, x] - 1].concepts:
                            counts[c] += 1
            for i, c in enumerate(CONCEPTS):
                out[i, gy, gx] = counts[c] >= 0.25 * ph * pw
    return out


def test_patch_concepts_match_brute_force(records):
    for record in records[:4]:
        for grid in [(8, 8), (4, 4)]:
            np.testing.assert_array_equal(
                synthetic.patch_concepts(record, grid), _brute_force_patch_concepts(record, grid)
            )
        # A record read back from JSON gives the same labels.
        np.testing.assert_array_equal(
            synthetic.patch_concepts(json.loads(json.dumps(record.to_dict())), (8, 8)),
            synthetic.patch_concepts(record, (8, 8)),
        )


def _one_object(shape: str, cx: float, cy: float, radius: float) -> ImageRecord:
    obj = SceneObject(shape, "red", "stripes", cx, cy, radius, 0.0, (215, 40, 35), 0.0, (0.0, 0.0))
    return ImageRecord(0, 128, Background("plain", (128, 128, 128), (128, 128, 128), 0.0, 0), (obj,), 6)


def test_patch_concepts_known_values():
    # A circle of radius 20 centred on the meeting point of the four central 16-px patches.
    record = _one_object("circle", 64.0, 64.0, 20.0)
    labels = synthetic.patch_concepts(record, (8, 8))
    assert labels.shape == (len(CONCEPTS), 8, 8)
    expected = np.zeros((8, 8), dtype=bool)
    expected[3:5, 3:5] = True
    for concept in ("shape:circle", "colour:red", "texture:stripes"):
        np.testing.assert_array_equal(labels[CONCEPTS.index(concept)], expected)
    assert labels.sum() == 3 * 4
    coverage = synthetic.patch_coverage(record, (8, 8))
    # Only the patch corner farthest from the centre (22.6 px away) lies outside the circle.
    assert 0.9 < coverage[0, 3, 3] < 1.0
    # Patch (2, 3) spans rows 32-47 and holds only the circle's cap: under the 25% threshold.
    assert 0 < coverage[0, 2, 3] < 0.25
    # A square whose corners reach (cx +- r, cy): a diamond covering the central patches fully.
    square = synthetic.patch_concepts(_one_object("square", 64.0, 64.0, 30.0), (8, 8))
    assert square[CONCEPTS.index("shape:square"), 3:5, 3:5].all()
    assert not square[CONCEPTS.index("shape:square"), 0].any()


def test_patch_grid_must_tile_the_image():
    with pytest.raises(ValueError, match="whole patches"):
        synthetic.patch_concepts(_one_object("circle", 64.0, 64.0, 20.0), (5, 5))


def test_vocabulary_is_covered(records):
    image_counts = np.sum([synthetic.image_concepts(r) for r in records], axis=0)
    patch_counts = np.sum([synthetic.patch_concepts(r, (8, 8)).any((1, 2)) for r in records], axis=0)
    assert (image_counts >= 20).all(), dict(zip(CONCEPTS, image_counts, strict=True))
    assert (patch_counts >= 15).all(), dict(zip(CONCEPTS, patch_counts, strict=True))
    assert {r.background.kind for r in records} == set(synthetic.BACKGROUNDS)
    assert {len(r.objects) for r in records} == {1, 2, 3}
    # Each object has exactly one concept per family, and the image's concepts are their union.
    for record in records:
        for obj in record.objects:
            assert [c.split(":")[0] for c in obj.concepts] == ["shape", "colour", "texture"]
        assert set(record.concepts) == {c for obj in record.objects for c in obj.concepts}


def test_objects_fit_and_never_overlap(records):
    for record in records:
        for k, a in enumerate(record.objects):
            assert a.radius <= a.cx <= record.size - a.radius
            assert a.radius <= a.cy <= record.size - a.radius
            for b in record.objects[k + 1 :]:
                assert np.hypot(a.cx - b.cx, a.cy - b.cy) >= a.radius + b.radius


def test_bad_scene_config():
    with pytest.raises(ValueError, match="n_objects"):
        synthetic.SceneConfig(n_objects=(2, 1))
    with pytest.raises(ValueError, match="radius"):
        synthetic.SceneConfig(radius=(0.1, 0.6))

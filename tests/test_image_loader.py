"""`saev.data.images.decode_batches`, the one image loader of recording, probes and steering, against
a plain PIL loop with the same transform on real photographs: the same tensors bit for bit, in the
same order, in process and in worker processes; and its reasons for images it cannot use."""

import pathlib

import pytest
import torch
from PIL import Image

from saev.activations.families import make_img_transform
from saev.activations.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_crop_normalize
from saev.data.images import ImageFiles, decode_batches

TRANSFORMS = {
    "builtin": lambda: make_img_transform("builtin", "shapes-vit"),
    "resize-crop": lambda: resize_crop_normalize(72, (64, 48), IMAGENET_MEAN, IMAGENET_STD),
}


def oracle(path: pathlib.Path, transform) -> torch.Tensor:
    with Image.open(path) as img:
        # The photos are RGB or grayscale: Pillow's own conversion is the reference.
        assert img.mode in ("RGB", "L")
        return transform(img.convert("RGB"))


@pytest.mark.parametrize("n_workers", [0, 2])
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_same_tensors_as_a_pil_loop(photos, name, n_workers):
    transform = TRANSFORMS[name]()
    chunks = list(
        decode_batches(ImageFiles(tuple(photos)), transform, range(len(photos)), 3, n_workers=n_workers)
    )
    assert [[d.index for d in c.items] for c in chunks] == [
        list(range(i, min(i + 3, len(photos)))) for i in range(0, len(photos), 3)
    ]
    for chunk in chunks:
        expected_B3HW = torch.stack([oracle(photos[d.index], transform) for d in chunk.items])
        assert torch.equal(chunk.stack(), expected_B3HW)
        assert chunk.images == [] and not chunk.failed


def test_a_range_of_indices_and_kept_pixels(photos):
    transform = TRANSFORMS["builtin"]()
    (chunk,) = decode_batches(ImageFiles(tuple(photos)), transform, range(2, 5), 8, keep_images=True)
    assert [d.index for d in chunk.readable] == [2, 3, 4]
    for d, img in zip(chunk.readable, chunk.images, strict=True):
        with Image.open(photos[d.index]) as want:
            assert img.tobytes() == want.convert("RGB").tobytes()


def test_reasons_for_unusable_images(photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    chelsea = next(p for p in photos if p.name == "chelsea.jpg")
    files = ImageFiles((photos[0], broken, chelsea))
    real = TRANSFORMS["builtin"]()

    def picky(img: Image.Image) -> torch.Tensor:
        if img.size == (451, 300):  # chelsea.jpg, of all the photos
            raise ValueError("not this one")
        return real(img)

    (chunk,) = decode_batches(files, picky, range(3), 3)
    assert [d.index for d in chunk.readable] == [0]
    unreadable, unprocessable = chunk.failed
    assert unreadable.unreadable == f"{broken}: not an image Pillow can identify"
    assert unprocessable.unprocessable == "ValueError: not this one" and unprocessable.unreadable is None
    with pytest.raises(ValueError, match="not this one"):
        list(decode_batches(files, picky, range(3), 3, skip_unprocessable=False))


def test_the_global_generator_is_left_alone(photos):
    """Callers seed the global generator for what follows loading; iterating must not draw from it."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    list(decode_batches(ImageFiles(tuple(photos[:2])), TRANSFORMS["builtin"](), range(2), 1))
    assert torch.equal(torch.rand(3), expected)

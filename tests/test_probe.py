"""`saev probe` on the built-in ViT: classification by colour, segmentation of coloured objects,
the mask-to-patch labelling against NumPy, the grid's AdamW against torch's, and bad input."""

import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from saev import synthetic
from saev.activations.families import hf, make_img_transform, make_vit
from saev.activations.transforms import resize_crop_normalize
from saev.cli import main
from saev.data.images import to_rgb
from saev.steering import load_probe, probes

VIT = ["--vit-family", "builtin", "--vit-ckpt", "shapes-vit"]
COLOURS = list(synthetic.COLOURS)
SINGLE = synthetic.SceneConfig(n_objects=(1, 1))
GRID = (8, 8)
PATCH = 16


def single_object_records(seed: int, per_colour: int) -> list[synthetic.ImageRecord]:
    """`per_colour` one-object scenes of each colour, in drawing order."""
    counts = dict.fromkeys(COLOURS, 0)
    out, i = [], 0
    while min(counts.values()) < per_colour:
        record = synthetic.sample_record(seed, i, SINGLE)
        i += 1
        colour = record.objects[0].colour
        if counts[colour] < per_colour:
            counts[colour] += 1
            out.append(record)
    return out


def colour_labels(record: synthetic.ImageRecord, mask: np.ndarray) -> np.ndarray:
    """[size, size] uint8: 0 background, 1 + colour index on each object's pixels."""
    labels = np.zeros_like(mask)
    for k, obj in enumerate(record.objects):
        labels[mask == k + 1] = COLOURS.index(obj.colour) + 1
    return labels


def numpy_majority(labels_HW: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Each patch's most frequent label (ties to the smallest), row-major, patch by patch."""
    rows, cols = grid
    ph, pw = labels_HW.shape[0] // rows, labels_HW.shape[1] // cols
    out = []
    for r in range(rows):
        for c in range(cols):
            values, counts = np.unique(
                labels_HW[r * ph : (r + 1) * ph, c * pw : (c + 1) * pw], return_counts=True
            )
            out.append(values[counts == counts.max()].min())
    return np.array(out)


@pytest.fixture(scope="module")
def vit():
    return make_vit("builtin", "shapes-vit")


def final_features(vit, images: list[np.ndarray]) -> torch.Tensor:
    transform = make_img_transform("builtin", "shapes-vit")
    x = torch.stack([transform(Image.fromarray(img)) for img in images])
    with torch.inference_mode():
        return vit.features(vit.run_to(x, -1))


# Classification


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("colours")
    for record in single_object_records(seed=1, per_colour=40):
        img, _ = synthetic.render(record)
        folder = root / record.objects[0].colour
        folder.mkdir(exist_ok=True)
        Image.fromarray(img).save(folder / f"{record.index:04d}.png", compress_level=1)
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.new("RGB", (128, 128), "white").save(root / "unlabelled.png")
    return root


@pytest.mark.slow
def test_classification_by_colour(colour_folder, tmp_path, vit, capsys, monkeypatch):
    out = tmp_path / "probe"
    argv = ["probe", *VIT, "--images", str(colour_folder), "--out", str(out)]
    main(argv)
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out / "probe.safetensors")
    assert "skipped 1 unreadable image" in captured.err
    assert "val acc" in captured.err and captured.err.count("\n*") == 1

    probe = load_probe(out / "probe.safetensors")
    assert probe.classes == tuple(sorted(COLOURS))
    assert (probe.task, probe.pool, probe.vit_family, probe.vit_ckpt) == (
        "classification",
        "cls",
        "builtin",
        "shapes-vit",
    )
    assert probe.weight_DC.shape == (vit.d_vit, 5) and probe.ignore_label is None
    assert len(probe.grid) == 9
    assert {(row["lr"], row["weight_decay"]) for row in probe.grid} == {
        (lr, wd) for lr in probes.DEFAULT_LRS for wd in probes.DEFAULT_WEIGHT_DECAYS
    }
    metrics = probe.metrics
    assert metrics["val_accuracy"] >= 0.95
    assert metrics["val_accuracy"] == max(row["val_accuracy"] for row in probe.grid)
    # 200 readable images in class folders (a broken one skipped, one in the root unlabelled), 20% held out.
    assert (metrics["n_train"], metrics["n_val"]) == (160, 40)
    assert set(metrics["per_class_val_accuracy"]) == set(COLOURS)

    # Fresh images: the saved probe reads raw `vit.features` output (standardisation folded in).
    fresh = single_object_records(seed=7, per_colour=8)
    logits = probe.logits(final_features(vit, [synthetic.render(r)[0] for r in fresh]), vit.layout.n_prefix)
    truth = torch.tensor([probe.classes.index(r.objects[0].colour) for r in fresh])
    assert (logits.argmax(-1) == truth).float().mean() >= 0.95

    # A rerun trains from the cached features and gives the same probe.
    (cache,) = out.glob("features-*.safetensors")
    mtime = cache.stat().st_mtime_ns

    def no_vit(*args, **kwargs):
        raise AssertionError("features recomputed despite the cache")

    monkeypatch.setattr(probes.training, "extract", no_vit)
    main(argv)
    assert "reused cached features" in capsys.readouterr().err
    assert cache.stat().st_mtime_ns == mtime
    again = load_probe(out / "probe.safetensors")
    assert torch.equal(again.weight_DC, probe.weight_DC) and again.metrics == probe.metrics


def test_feature_cache_follows_the_inputs(colour_folder, tmp_path, monkeypatch):
    """The cache key covers the images and the pooling: a different pool computes anew."""
    out = tmp_path / "probe"
    calls = []
    real = probes.extract

    def counting(cfg, inputs):
        calls.append(cfg.pool)
        return real(cfg, inputs)

    monkeypatch.setattr(probes.training, "extract", counting)
    base = ["probe", *VIT, "--images", str(colour_folder), "--out", str(out), "--epochs", "2"]
    main(base)
    main([*base, "--pool", "mean"])
    main([*base, "--pool", "mean", "--lrs", "0.1"])  # training options do not touch the cache
    assert calls == [None, "mean"]
    assert len(list(out.glob("features-*.safetensors"))) == 2
    assert load_probe(out / "probe.safetensors").pool == "mean"


# Segmentation


@pytest.fixture(scope="module")
def segmentation_folders(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """Scenes of 1-3 objects; masks 0 = background, 1 + colour index on objects, and 255 over the
    top-left 2x2 patches of every other image."""
    root = tmp_path_factory.mktemp("segmentation")
    (root / "images" / "a").mkdir(parents=True)
    (root / "masks" / "a").mkdir(parents=True)
    for i in range(80):
        record = synthetic.sample_record(2, i)
        img, mask = synthetic.render(record)
        labels = colour_labels(record, mask)
        if i % 2:
            labels[: 2 * PATCH, : 2 * PATCH] = 255
        sub = "a/" if i % 3 == 0 else ""  # nested folders pair up by relative path
        Image.fromarray(img).save(root / "images" / f"{sub}{i:03d}.png", compress_level=1)
        Image.fromarray(labels).save(root / "masks" / f"{sub}{i:03d}.png")
    return root / "images", root / "masks"


@pytest.mark.slow
def test_segmentation_by_colour(segmentation_folders, tmp_path, vit, capsys):
    images, masks = segmentation_folders
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(["background", *COLOURS]) + "\n")
    out = tmp_path / "probe"
    main(
        [
            *["probe", *VIT, "--images", str(images), "--masks", str(masks)],
            *["--class-names", str(names), "--out", str(out)],
        ]
    )
    assert capsys.readouterr().out.strip() == str(out / "probe.safetensors")
    probe = load_probe(out / "probe.safetensors")
    assert probe.classes == ("background", *COLOURS)
    assert (probe.task, probe.ignore_label) == ("segmentation", 255)
    # Ignored patches are neither trained on nor scored: 40 images lose their 4 top-left patches.
    metrics = probe.metrics
    assert metrics["n_train"] + metrics["n_val"] == 80 * 64 - 40 * 4
    assert (metrics["n_train_images"], metrics["n_val_images"]) == (64, 16)
    assert metrics["val_accuracy"] >= 0.9

    # Held-out scenes: accuracy on the patches whose majority label is an object.
    held = [synthetic.sample_record(5, i) for i in range(40)]
    rendered = [synthetic.render(r) for r in held]
    truth = np.stack(
        [numpy_majority(colour_labels(r, m), GRID) for r, (_, m) in zip(held, rendered, strict=True)]
    )
    logits = probe.logits(final_features(vit, [img for img, _ in rendered]), vit.layout.n_prefix)
    pred = logits.argmax(-1).numpy()
    on_objects = truth != 0
    assert on_objects.sum() > 200
    assert (pred[on_objects] == truth[on_objects]).mean() >= 0.9
    assert (pred == truth).mean() >= 0.9


def test_segmentation_default_classes_are_the_labels_present():
    """Without --class-names the classes are the label values present, the ignore label left out."""
    labels_IP = torch.tensor([[0, 3, 7, 255], [7, 7, 0, 255]])
    feats = probes.Features(
        torch.arange(8.0)[:, None].repeat(1, 4), labels_IP, ("x.png", "y.png"), {}, "mean", (2, 2), 1
    )
    cfg = probes.ProbeConfig(
        "builtin", "shapes-vit", pathlib.Path("img"), pathlib.Path("out"), pathlib.Path("m")
    )
    inputs = probes.Inputs(("x.png", "y.png"), ("x.png", "y.png"), None)
    examples = probes.examples_from(cfg, inputs, feats)
    assert examples.classes == ("0", "3", "7")
    assert examples.y_N.tolist() == [0, 1, 2, 2, 2, 0]
    assert examples.image_N.tolist() == [0, 0, 0, 1, 1, 1]
    assert examples.x_ND[:, 0].tolist() == [0, 1, 2, 4, 5, 6]


# Mask -> patch labels


def blocky_mask(rng: np.random.Generator, shape: tuple[int, int], block: int) -> np.ndarray:
    """Labels constant over block x block squares, so any nearest-neighbour downscale by `block` is exact."""
    small = rng.choice([0, 1, 2, 255], size=(shape[0] // block, shape[1] // block), p=[0.4, 0.25, 0.25, 0.1])
    return np.kron(small, np.ones((block, block), dtype=np.int64)).astype(np.int64)


@pytest.mark.parametrize(("steps", "scale"), [("torchvision", 2), ("torchvision", 1), ("hf", 2)])
def test_mask_labels_match_numpy_on_a_non_square_crop(steps, scale):
    """A (40 scale)x(60 scale) mask resized to 40x60, centre-cropped to 24x36, in 4x6 patches of 6x6 px.

    Labels are constant over scale x scale squares, so any nearest-neighbour downscale is exact.
    """
    rng = np.random.default_rng(scale)
    mask = blocky_mask(rng, (40 * scale, 60 * scale), block=scale)
    if steps == "torchvision":
        transform = resize_crop_normalize(40, (24, 36), (0.5,) * 3, (0.25,) * 3)
        attr = "interpolation"
    else:  # frozen dataclasses holding a Pillow filter, as the hf family's processors build them
        from torchvision.transforms import v2  # 1.7 s to import; only this case needs it directly

        transform = v2.Compose(
            [to_rgb, hf.ResizeTo(40, 60, int(Image.Resampling.BICUBIC)), hf.CenterCrop(24, 36), v2.ToImage()]
        )
        attr = "resample"
    resampling = getattr(transform.transforms[1], attr)
    crop = probes.mask_crop(transform, mask)
    small = mask[::scale, ::scale]
    top, left = (40 - 24) // 2, (60 - 36) // 2
    np.testing.assert_array_equal(crop, small[top : top + 24, left : left + 36])
    expected = numpy_majority(small[top : top + 24, left : left + 36], (4, 6))
    np.testing.assert_array_equal(probes.patch_majority(crop, (4, 6)), expected)
    # The images' own transform keeps its resampling.
    assert getattr(transform.transforms[1], attr) == resampling
    assert "nearest" not in str(resampling).lower() and resampling != int(Image.Resampling.NEAREST)


def test_patch_majority_ties_go_to_the_smallest_label():
    crop = np.array([[3, 3, 1, 1], [1, 1, 3, 3], [255, 255, 0, 0], [255, 255, 255, 0]], dtype=np.int64)
    assert probes.patch_majority(crop, (1, 2)).tolist() == [255, 0]
    assert probes.patch_majority(crop, (2, 2)).tolist() == [1, 1, 255, 0]


@pytest.mark.parametrize(
    ("mode", "suffix", "scale"), [("L", "png", 1), ("P", "png", 1), ("I;16", "png", 100), ("I", "tif", 1000)]
)
def test_read_mask_reads_labels_in_every_mode(tmp_path, mode, suffix, scale):
    labels = np.array([[0, 1, 2, 255]] * 8, dtype=np.int64) * scale
    if mode == "P":
        img = Image.fromarray(labels.astype(np.uint8)).convert("P")
        img.putdata(labels.reshape(-1).tolist())
    else:
        img = Image.fromarray(labels.astype({"L": np.uint8, "I;16": np.uint16, "I": np.int32}[mode]))
    assert img.mode == mode
    img.save(tmp_path / f"m.{suffix}")
    np.testing.assert_array_equal(probes.read_mask(tmp_path / f"m.{suffix}"), labels)


# The grid's optimiser


def test_stacked_adamw_equals_torch_adamw_per_head():
    torch.manual_seed(0)
    lrs, wds = [1e-3, 1e-2, 3e-2], [0.0, 1e-2, 0.1]
    stacked = torch.randn(3, 5, 4)
    grads = [torch.randn(3, 5, 4) for _ in range(6)]
    heads = [torch.nn.Parameter(stacked[g].clone()) for g in range(3)]
    optims = [torch.optim.AdamW([heads[g]], lr=lrs[g], weight_decay=wds[g]) for g in range(3)]
    exp_avg, exp_avg_sq = torch.zeros_like(stacked), torch.zeros_like(stacked)
    for step, grad in enumerate(grads, start=1):
        probes.adamw_step(stacked, grad, exp_avg, exp_avg_sq, step, torch.tensor(lrs), torch.tensor(wds))
        for g in range(3):
            heads[g].grad = grad[g].clone()
            optims[g].step()
    for g in range(3):
        torch.testing.assert_close(stacked[g], heads[g].detach(), rtol=1e-5, atol=1e-6)


def test_grid_heads_train_independently():
    """A head trained inside the grid is the head trained alone with the same settings."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 6, generator=gen) * 3 + 2
    y = (x[:, 0] + x[:, 1] > 4).long() + (x[:, 2] > 3).long()
    args = (x[:40], y[:40], x[40:], y[40:], 3)
    grid = probes.train_grid(*args, (1e-3, 1e-2), (0.0, 0.1), 5, 16, 0)
    alone = probes.train_grid(*args, (1e-2,), (0.1,), 5, 16, 0)
    torch.testing.assert_close(grid.weight_GDC[3], alone.weight_GDC[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grid.bias_GC[3], alone.bias_GC[0], rtol=1e-4, atol=1e-5)
    assert (grid.scores[3]["lr"], grid.scores[3]["weight_decay"]) == (1e-2, 0.1)
    assert grid.scores[3] == pytest.approx(alone.scores[0])
    # Folded standardisation: raw-feature logits of the saved weights equal the scored ones.
    acc, _ = probes.grid._evaluate(x[40:], y[40:], grid.weight_GDC, grid.bias_GC)
    assert [s["val_accuracy"] for s in grid.scores] == pytest.approx(acc.tolist())


# Bad input


@pytest.fixture
def no_vit(monkeypatch):
    """Bad input must fail before the ViT is built."""

    def refuse(*args, **kwargs):
        raise AssertionError("the ViT was built before the input was checked")

    monkeypatch.setattr(probes.features, "make_vit", refuse)


def saev_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("saev: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--lrs", "0.01", "0"], "--lrs must be one or more positive"),
        (["--weight-decays", "-1"], "--weight-decays must be one or more non-negative"),
        (["--val-fraction", "1"], "--val-fraction must lie strictly between 0 and 1"),
        (["--val-fraction", "0"], "--val-fraction must lie strictly between 0 and 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_absurd_options(colour_folder, tmp_path, capsys, no_vit, options, message):
    argv = ["probe", *VIT, "--images", str(colour_folder), "--out", str(tmp_path / "o"), *options]
    assert message in saev_error(argv, capsys)


def test_bad_folders(tmp_path, capsys, no_vit):
    base = ["probe", *VIT, "--out", str(tmp_path / "o")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no image files found" in saev_error([*base, "--images", str(empty)], capsys)
    one = tmp_path / "one-class"
    (one / "red").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (128, 128), "red").save(one / "red" / f"{i}.png")
    assert "at least two class subfolders" in saev_error([*base, "--images", str(one)], capsys)
    assert "image folder not found" in saev_error([*base, "--images", str(tmp_path / "nowhere")], capsys)


def write_pairs(root: pathlib.Path, n: int) -> tuple[pathlib.Path, pathlib.Path]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.new("RGB", (128, 128), "white").save(root / "images" / f"{i}.jpg")
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "masks" / f"{i}.png")
    return root / "images", root / "masks"


def test_bad_masks(tmp_path, capsys, no_vit):
    images, masks = write_pairs(tmp_path / "d", 4)
    base = ["probe", *VIT, "--images", str(images), "--masks", str(masks), "--out", str(tmp_path / "o")]
    (masks / "3.png").unlink()
    err = saev_error(base, capsys)
    assert "no mask for 1 of 4 image(s)" in err and "3.jpg" in err
    (masks / "3.png").write_bytes(b"not an image at all")
    err = saev_error(base, capsys)
    assert f"{masks / '3.png'}: mask is not an image" in err
    Image.new("RGB", (64, 64)).save(masks / "3.png")
    assert f"{masks / '3.png'}: mask has mode RGB" in saev_error(base, capsys)
    Image.new("L", (64, 64)).save(masks / "3.png")
    assert "--pool applies to classification" in saev_error([*base, "--pool", "cls"], capsys)
    names = tmp_path / "names.txt"
    names.write_text("only-one\n")
    assert "needs at least two class names" in saev_error([*base, "--class-names", str(names)], capsys)


def test_single_segmentation_class(tmp_path, capsys):
    """Masks of one class (after the ignore label) fail before any image goes through the ViT."""
    images, masks = write_pairs(tmp_path / "d", 3)
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(masks / "0.png")
    err = saev_error(
        ["probe", *VIT, "--images", str(images), "--masks", str(masks), "--out", str(tmp_path / "o")], capsys
    )
    assert "needs at least two classes" in err and "found [0]" in err
    assert not list((tmp_path / "o").glob("features-*"))


def test_unnamed_labels(tmp_path, capsys):
    images, masks = write_pairs(tmp_path / "d", 3)
    Image.fromarray(np.full((64, 64), 4, np.uint8)).save(masks / "0.png")
    names = tmp_path / "names.txt"
    names.write_text("background\nthing\n")
    argv = ["probe", *VIT, "--images", str(images), "--masks", str(masks), "--class-names", str(names)]
    err = saev_error([*argv, "--out", str(tmp_path / "o")], capsys)
    assert "mask label(s) [4] have no name in --class-names" in err


def test_masks_of_another_aspect_ratio_are_warned_about(tmp_path, caplog):
    images, masks = write_pairs(tmp_path / "d", 2)
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(masks / "1.png")
    cfg = probes.ProbeConfig("builtin", "shapes-vit", images, tmp_path / "o", masks)
    inputs = probes.gather_inputs(cfg)
    assert inputs.masks == ("0.png", "1.png")
    assert "1 mask(s) have another aspect ratio" in caplog.text and "1.png (64x32 px)" in caplog.text

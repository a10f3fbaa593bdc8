"""`saev steer`, `saev steer --evaluate` and `saev evaluate` through the real CLI, the metrics
against plain computations, and CLIP zero-shot classification."""

import json
import pathlib

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import saev.nn
from saev import synthetic
from saev.activations import make_img_transform, make_vit
from saev.activations.transforms import visible_crop
from saev.cli import main
from saev.steering import SplicedVit
from saev.steering.effects import Counts, steering_test
from saev.steering.heads import builtin_head, clip_zero_shot_head
from saev.steering.reconstruction import evaluate_splice
from tests.conftest import photo
from tests.test_lens_logit_lens import concept_sae
from tests.test_steering import random_sae


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Twelve synthetic images with their labels, and an SAE file for the built-in ViT."""
    root = tmp_path_factory.mktemp("scene")
    synthetic.generate(root / "syn", 12, seed=4)
    sae = random_sae(128, -2)
    sae.provenance = saev.nn.Provenance("builtin", "shapes-vit", -2, "patches")
    saev.nn.dump(root / "sae.safetensors", sae)
    return root


def test_steer_prints_before_and_after_and_draws_each_image(scene, tmp_path, capsys):
    images = sorted((scene / "syn" / "images").iterdir())[:3]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    args = ["steer", *map(str, images), str(bad), "--sae", str(scene / "sae.safetensors")]
    main(
        [
            *args,
            "--head",
            "builtin-patch",
            "builtin-image",
            "--edit",
            "7=-1x",
            "9=+2",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    out = capsys.readouterr()
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert out.out.strip() == str(tmp_path / "s" / "report.json")
    assert report["edits"] == ["7=-1x", "9=+2"] and report["where"] == "all"
    assert list(report["skipped"]) == [str(bad)] and "skipped 1 unreadable image" in out.err
    assert len(report["images"]) == 6  # 3 images x 2 heads
    patch_rows = [r for r in report["images"] if r["head"] == "builtin-patch"]
    image_rows = [r for r in report["images"] if r["head"] == "builtin-image"]
    assert all("changed_patches" in r for r in patch_rows) and all(len(r["before"]) == 3 for r in image_rows)
    for row in report["images"]:
        with Image.open(row["png"]) as img:
            assert img.width > 2 * 128
    assert "patch(es) changed" in out.err and " -> " in out.err


def drawn_changed(png: pathlib.Path, crop: Image.Image, grid: tuple[int, int] = (8, 8)) -> set[int]:
    """The patches a steering picture's last ("changed") panel marks: those that differ from the crop
    (its first panel), since unchanged patches are drawn see-through."""
    tiles = tile_pixels(png, crop)
    gh, gw = grid
    h, w = tiles[0].shape[:2]
    diff = np.abs(tiles[-1] - tiles[0]).reshape(gh, h // gh, gw, w // gw, 3).max((1, 3, 4))
    return set(np.flatnonzero(diff.reshape(-1) > 40).tolist())


def tile_pixels(png: pathlib.Path, crop: Image.Image) -> list[np.ndarray]:
    """The panels of a steering picture (`steering_panels`: crop-sized tiles 4 px apart), as RGB."""
    w, h = crop.size
    with Image.open(png) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    tiles = [rgb[:h, x : x + w] for x in range(0, rgb.shape[1] - w + 1, w + 4)]
    assert np.array_equal(tiles[0], np.asarray(crop.convert("RGB")))
    return tiles


def test_steer_pictures_mark_the_reported_patches_and_show_the_suppressed_class(tmp_path, capsys):
    synthetic.generate(tmp_path / "syn", 24, seed=7)
    paths = sorted((tmp_path / "syn" / "images").iterdir())
    saev.nn.dump(tmp_path / "sae.safetensors", concept_sae(paths))
    red, purple = paths[8], paths[1]  # a red circle and star; a purple star, where the red latent also fires
    # On this one a patch's predicted classes change while its top class stays: a picture of
    # top-class changes would miss it.
    subtle = paths[7]
    args = ["steer", str(red), str(purple), str(subtle), "--sae", str(tmp_path / "sae.safetensors")]
    args += ["--head", "builtin-patch"]
    # Latent 4 is colour:red's direction: suppressing it where it fires.
    main([*args, "--edit", "4=-1x", "--where", "active", "--out", str(tmp_path / "s")])
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    transform = make_img_transform("builtin", "shapes-vit")
    by_image = {pathlib.Path(r["image"]): r for r in report["images"]}
    for path, shown in ((red, "colour:red"), (purple, "colour:purple"), (subtle, None)):
        row = by_image[path]
        changed = {r["patch"] for r in row["changed_patches"]}
        crop = visible_crop(transform, Image.open(path).convert("RGB"))
        assert changed and drawn_changed(pathlib.Path(row["png"]), crop) == changed
        if shown is None:
            continue
        assert row["shown_class"] == shown  # the class whose presence changes most
        # Its presence panels: the patches that lose the class are bright before the edit, dark after.
        lost = [
            r["patch"] for r in row["changed_patches"] if shown in r["before"] and shown not in r["after"]
        ]
        *_, before, after, _ = tile_pixels(pathlib.Path(row["png"]), crop)
        cells = [np.s_[p // 8 * 16 : p // 8 * 16 + 16, p % 8 * 16 : p % 8 * 16 + 16] for p in lost]
        assert lost and all(before[c].mean() > 1.5 * after[c].mean() for c in cells)
    # --show-class draws another class; one no head has is refused.
    main([*args, "--edit", "4=-1x", "--show-class", "shape:star", "--out", str(tmp_path / "star")])
    rows = json.loads((tmp_path / "star" / "report.json").read_text())["images"]
    assert {r["shown_class"] for r in rows} == {"shape:star"}
    with pytest.raises(SystemExit):
        main([*args, "--edit", "4=-1x", "--show-class", "shape:hexagon", "--out", str(tmp_path / "x")])
    assert "expected one of" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--edit", "9999=0"], "latents \\[9999\\]"),
        (["--edit", "3"], "expected LATENT=V"),
        ([], "at least one --edit"),
        (["--edit", "3=0", "--layer", "0"], "trained on block -2, not block 0 of 4"),
        (["--edit", "3=0", "--patches", "1,x"], "comma-separated"),
        (["--edit", "3=0", "--patches", "64"], "out of range"),
    ],
)
def test_steer_refuses_bad_requests_before_any_work(scene, tmp_path, capsys, extra, message):
    image = sorted((scene / "syn" / "images").iterdir())[0]
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "steer",
                str(image),
                "--sae",
                str(scene / "sae.safetensors"),
                "--head",
                "builtin-patch",
                *extra,
                "--out",
                str(tmp_path / "x"),
            ]
        )
    assert exit_info.value.code == 2
    assert message.replace("\\", "") in capsys.readouterr().err.replace("\\", "")
    assert not (tmp_path / "x" / "report.json").exists()


def test_steer_evaluate_reports_change_rates_and_baselines(scene, tmp_path, capsys):
    args = [
        "steer",
        str(scene / "syn" / "images"),
        "--sae",
        str(scene / "sae.safetensors"),
        "--head",
        "builtin-patch",
    ]
    main([*args, "--evaluate", "--latents", "colour:red=3", "shape:star=11", "--out", str(tmp_path / "e")])
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    [test] = report["tests"]
    assert [c["class"] for c in test["classes"]] == ["colour:red", "shape:star"]
    assert [c["latent"] for c in test["classes"]] == [3, 11]
    assert set(test["medians"]) >= {"target", "other", "random_latent_target", "random_direction_target"}
    assert "| median |" in capsys.readouterr().err
    # Without --latents, each class's latent is its best detector on the folder's labels.
    main([*args, "--evaluate", "--out", str(tmp_path / "auto")])
    auto = json.loads((tmp_path / "auto" / "report.json").read_text())["tests"][0]["classes"]
    assert {c["class"] for c in auto} <= set(synthetic.CONCEPTS) and len(auto) >= 8


def test_change_counts_against_a_plain_count():
    before = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 0, 0], [0, 1, 0], [0, 1, 1]], dtype=torch.bool)
    after = torch.tensor([[0, 0, 1], [1, 1, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    counts = Counts()
    counts.add(before, after, 0, multilabel=True)
    # class 0 predicted on rows 0 and 1, kept on row 1; the other object rows are 3 and 4 (row 2
    # predicts nothing), of which row 4 changed.
    assert (counts.n_target, counts.target_changed, counts.n_other, counts.other_changed) == (2, 1, 2, 1)
    assert counts.target == 0.5 and counts.other == 0.5


def test_steering_test_counts_what_a_direct_edit_changes(scene):
    vit = make_vit("builtin", "shapes-vit")
    transform = make_img_transform("builtin", "shapes-vit")
    x = torch.stack([transform(Image.open(p)) for p in sorted((scene / "syn" / "images").iterdir())])
    spliced = SplicedVit(vit, saev.nn.load(scene / "sae.safetensors"))
    head = builtin_head(vit, "patch")
    max_S = spliced.prefix(x).codes_BNS.amax((0, 1))
    latent = int(max_S.argmax())
    [test] = steering_test(spliced, [head], [x[:6], x[6:]], [(4, latent)], max_S)
    with torch.inference_mode():
        tokens = vit.run_to(x, -2)
        read = tokens[:, 1:]
        f = spliced.sae.encode(read)
        f2 = f.clone()
        f2[..., latent] = torch.where(f[..., latent] > 0, -max_S[latent], f[..., latent])
        edited = torch.cat([tokens[:, :1], read + spliced.sae.decode(f2) - spliced.sae.decode(f)], 1)
        before = head.predict(head.logits(vit.run_to(x, -1))).reshape(-1, 12)
        after = head.predict(head.logits(vit.blocks_from(edited, -2))).reshape(-1, 12)
    target = before[:, 4]
    assert test.results[0].edit.n_target == int(target.sum())
    assert test.results[0].edit.target_changed == int((target & ~after[:, 4]).sum())


def test_spliced_evaluation_against_a_plain_computation(scene, tmp_path, capsys):
    vit = make_vit("builtin", "shapes-vit")
    transform = make_img_transform("builtin", "shapes-vit")
    dataset = synthetic.load(scene / "syn")
    x = torch.stack([transform(Image.open(scene / "syn" / r.file)) for r in dataset.records])
    y = torch.from_numpy(np.stack([synthetic.patch_rows(r, (8, 8)) for r in dataset.records])).float()
    sae = saev.nn.load(scene / "sae.safetensors")
    ev = evaluate_splice(SplicedVit(vit, sae), builtin_head(vit, "patch"), [(x[:5], y[:5]), (x[5:], y[5:])])
    model = vit.model
    with torch.inference_mode():
        tokens = vit.run_to(x, -2)
        losses = {}
        for name, read in {
            "clean": tokens[:, 1:],
            "spliced": sae.decode(sae.encode(tokens[:, 1:])),
            "zero": torch.zeros_like(tokens[:, 1:]),
            "mean": sae.act_mean.expand_as(tokens[:, 1:]),
        }.items():
            final = vit.blocks_from(torch.cat([tokens[:, :1], read], 1), -2)
            logits = model.patch_head(model.norm(final)[:, 1:])
            losses[name] = float(F.binary_cross_entropy_with_logits(logits, y))
    for name, loss in losses.items():
        assert ev.scores[name].loss == pytest.approx(loss, rel=1e-4), name
    assert ev.scores["clean"].kl == pytest.approx(0, abs=1e-7) and ev.n_units == 12 * 64
    assert ev.recovered_zero == pytest.approx(
        (losses["zero"] - losses["spliced"]) / (losses["zero"] - losses["clean"]), rel=1e-4
    )
    # The command: labels come from the synthetic folder, one report per head.
    main(
        [
            "evaluate",
            str(scene / "syn" / "images"),
            "--sae",
            str(scene / "sae.safetensors"),
            "--head",
            "builtin-patch",
            "builtin-image",
            "--out",
            str(tmp_path / "ev"),
        ]
    )
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    [patch, image] = report["evaluations"]
    assert patch["labels"] == "given" and patch["scores"]["spliced"]["loss"] == pytest.approx(
        ev.scores["spliced"].loss, rel=1e-4
    )
    assert image["n_units"] == 12
    assert "recovered:" in capsys.readouterr().err


def test_clip_zero_shot_head_is_clip_similarity(tiny_clip, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nrocket\n")
    vit = make_vit("clip", tiny_clip)
    head = clip_zero_shot_head(vit, classes, "a photo of a {}.")
    x = make_img_transform("clip", tiny_clip)(photo("chelsea"))[None]
    logits = head.logits(vit.run_to(x, -1))
    model = open_clip.create_model(tiny_clip)
    tokenizer = open_clip.get_tokenizer(tiny_clip)
    with torch.inference_mode():
        image = F.normalize(model.encode_image(x), dim=-1)
        text = F.normalize(
            model.encode_text(tokenizer(["a photo of a cat.", "a photo of a dog.", "a photo of a rocket."])),
            dim=-1,
        )
        expected = model.logit_scale.exp() * image @ text.T
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert head.classes == ("cat", "dog", "rocket") and not head.multilabel

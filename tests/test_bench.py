"""`saev bench` end to end in the built-in world: the quickstart's scorecard, the ordering of SAEs of
known quality (a trained SAE against a random dictionary), the outputs, and refusals."""

import json
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from saev import synthetic
from saev.activations.families import make_img_transform, make_vit
from saev.bench import inputs
from saev.bench.report import best
from saev.bench.run import reseeds_of
from saev.cli import main
from saev.data.store import open_shards
from saev.nn import Provenance, SaeConfig, SparseAutoencoder, TopK, checkpoints
from tests.test_hardening_cli import run_cli


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A reduced quickstart (its report carries the scorecard) and a random-dictionary twin of its SAE."""
    out = tmp_path_factory.mktemp("bench") / "qs"
    main(["quickstart", "--out", str(out), "--n-images", "300", "--n-train", "300000", "--n-latents", "4"])
    report = json.loads((out / "report.json").read_text())
    sae = checkpoints.load(report["sae"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = torch.nn.functional.normalize(torch.randn(sae.W_dec.shape, generator=g), dim=1)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_enc.zero_()
    random = out / "random.safetensors"
    checkpoints.dump(random, sae)
    return out, report, random


def metric(card: dict, name: str) -> dict:
    return next(m for m in card["metrics"] if m["name"] == name)


@pytest.mark.slow
def test_the_quickstart_reports_its_scorecard_and_the_gallery_links_it(world):
    out, report, _ = world
    card = report["scorecard"]
    names = {m["name"] for m in card["metrics"]}
    for expected in (
        "fvu",
        "l0",
        "dead",
        "morans_i",
        "probe_k5",
        "detection_f1",
        "absorption_rate",
        "monosemanticity",
        "recovered_zero",
        "steering_selectivity",
    ):
        assert expected in names
    assert set(card["skipped"]) == {"stability"}
    fvu = metric(card, "fvu")
    assert fvu["n"] == 30  # the 10% the quickstart's SAE was not trained on
    assert fvu["low"] <= fvu["value"] <= fvu["high"]
    assert (out / "bench" / "index.html").is_file()
    assert 'href="../bench/index.html"' in (out / "gallery" / "index.html").read_text()


@pytest.mark.slow
def test_a_trained_sae_beats_a_random_dictionary_outside_the_intervals(world, capsys):
    out, report, random = world
    store = json.loads((out / "report.json").read_text())["store"]
    args = ["bench", "--sae", report["sae"], str(random), "--shards", store, "--out", str(out / "b2")]
    main([*args, "--resamples", "50"])
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out / "b2" / "report.json")
    assert "| fvu | down |" in captured.err
    cards = json.loads((out / "b2" / "report.json").read_text())["saes"]
    trained, rand = cards
    for name in ("fvu", "detection_f1", "probe_k1", "recovered_zero", "steering_selectivity"):
        better = metric(trained, name)["higher_is_better"]
        a, b = metric(trained, name), metric(rand, name)
        if better:
            assert a["low"] > b["high"], name
        else:
            assert a["high"] < b["low"], name
    page = (out / "b2" / "index.html").read_text()
    assert page.count('class="best"') >= 5
    assert "data:image/png;base64," in page


def test_best_marks_only_a_winner_outside_every_other_interval():
    from saev.bench.run import Scorecard
    from saev.bench.stats import Estimate, Metric

    def card(value, low, high):
        return Scorecard("x", [Metric("m", "g", Estimate(value, low, high, 10), True)], {}, 10, 0.0)

    assert best([card(0.9, 0.8, 1.0), card(0.5, 0.4, 0.6)], "m") == {0}
    assert best([card(0.9, 0.5, 1.0), card(0.5, 0.4, 0.6)], "m") == set()


@pytest.mark.slow
def test_objects_are_absorption_items_with_the_world_hierarchy(world):
    out, report, _ = world
    store = open_shards(report["store"])
    known = inputs.knowledge(store, range(len(store)), store.path.parent.parent / "images" / "images", None)
    assert known.source == "built-in world"
    assert len(known.tasks) == len(synthetic.CONCEPTS)
    [shape, colour, texture] = known.hierarchies
    assert shape.groups == {"shape:polygon": [1, 2, 3]}
    assert colour.groups == {"colour:warm": [0, 3], "colour:cool": [1, 2, 4]}
    assert len(known.items.image_M) == len(shape.labels_N) > len(store)  # 1-3 objects per image
    # each object covers patches, and those patches carry its shape in the patch masks
    m = 0
    i, rows = known.items.image_M[m], known.items.patches_MP[m]
    assert rows.any()
    assert known.patch_NPC[i][rows, shape.labels_N[m]].all()


def test_patch_codes_give_back_the_dense_codes():
    codes = inputs.PatchCodes(4, 6)
    dense = torch.relu(torch.randn(5, 4, 6))
    codes.add(dense[:3])
    codes.add(dense[3:])
    codes.freeze()
    assert torch.equal(codes.block(1, 4), dense[1:4])
    assert torch.equal(torch.cat(list(codes.blocks())), dense)


def test_reseeds_are_runs_that_differ_only_in_their_seed(tmp_path):
    runs = []
    for seed, k in ((0, 16), (1, 16), (2, 32)):
        folder = tmp_path / f"run{seed}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"config": {"k": k, "seed": seed, "data_seed": seed}}))
        runs.append(str(folder / "sae.safetensors"))
    assert reseeds_of(runs[:1], runs[1:]) == {runs[0]: [runs[1]]}


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give at least one --sae"),
        (["--sae", "x.safetensors"], "give --shards STORE, or --images DIR"),
        (
            ["--sae", "x.safetensors", "--shards", "s", "--resamples", "3"],
            "--resamples must be in [10, 10000]",
        ),
        (["--sae", "x.safetensors", "--shards", "s", "--resamples", "1000000000"], "--resamples must be in"),
    ],
)
def test_bad_options_are_one_line(args, message, capsys):
    assert message in run_cli(["bench", *args], capsys)


def test_a_hierarchy_file_that_is_not_a_mapping_is_named(tmp_path):
    path = tmp_path / "h.json"
    path.write_text("[1, 2]")
    with pytest.raises(Exception, match="h.json: a label hierarchy is a JSON object"):
        inputs.read_hierarchy(path)


@pytest.mark.slow
def test_label_masks_give_concept_detection_on_any_images(world, tmp_path):
    """Masks mirroring the image folder (here: each object's shape) become the detection concepts."""
    out, report, _ = world
    dataset = synthetic.load(out / "images")
    masks = tmp_path / "masks"
    masks.mkdir()
    for r in dataset.records:
        ids = synthetic.object_mask(r)
        shape = np.array([0] + [synthetic.SHAPES.index(o.shape) + 1 for o in r.objects], dtype=np.uint8)
        Image.fromarray(shape[ids]).save(masks / pathlib.PurePath(r.file).name)
    names = tmp_path / "names.txt"
    names.write_text("background\n" + "\n".join(synthetic.SHAPES) + "\n")
    store = open_shards(report["store"])
    files = [rec["path"] for rec in store.images]
    known = inputs.knowledge(store, range(len(store)), None, None)
    transform = make_img_transform("builtin", "shapes-vit")
    known = inputs.with_masks(known, files, masks, names, transform, store.grid)
    assert known.concepts == synthetic.SHAPES
    square = synthetic.CONCEPTS.index("shape:square")
    world_masks = inputs.knowledge(store, range(len(store)), out / "images" / "images", None).patch_NPC
    # A square-majority patch is >= 25% square (the world's rule); the rule also takes smaller shares.
    majority, covered = known.patch_NPC[..., 1], world_masks[..., square]
    assert not (majority & ~covered).any()
    assert (majority & covered).sum() / covered.sum() > 0.5
    with pytest.raises(Exception, match="no mask for 1 image"):
        (masks / files[0]).unlink()
        inputs.with_masks(known, files, masks, names, transform, store.grid)


@pytest.mark.slow
def test_class_folders_record_first_and_skip_what_they_cannot_support(tmp_path, photos, tiny_clip, capsys):
    """`--images` records the SAE's ViT and layer first; class folders give the probing task, a
    CLIP zero-shot head gives preservation; detection, steering, absorption and stability say why not."""
    images = tmp_path / "images"
    for k, path in enumerate(photos + photos):
        cls = images / ("outdoor" if k % 2 else "indoor")
        cls.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").rotate(15 * k).save(cls / f"{k:02d}.png")
    vit = make_vit("clip", tiny_clip)
    sae = SparseAutoencoder(
        SaeConfig(d_vit=vit.d_vit, d_sae=4 * vit.d_vit, activation=TopK(k=4)),
        Provenance(vit_family="clip", vit_ckpt=tiny_clip, layer=-2, tokens="patches"),
    )
    checkpoints.dump(tmp_path / "sae.safetensors", sae)
    (tmp_path / "classes.txt").write_text("indoor\noutdoor\n")
    args = ["--sae", str(tmp_path / "sae.safetensors"), "--images", str(images), "--out", str(tmp_path / "b")]
    args += ["--head", f"clip-zero-shot:{tmp_path / 'classes.txt'}", "--resamples", "20"]
    main(["bench", *args])
    [card] = json.loads((tmp_path / "b" / "report.json").read_text())["saes"]
    names = {m["name"] for m in card["metrics"]}
    assert {"fvu", "probe_k1", "recovered_zero", "morans_i"} <= names
    assert set(card["skipped"]) == {"detection", "absorption", "stability", "monosemanticity", "steering"}
    assert "--evaluator" in card["skipped"]["monosemanticity"]
    assert card["n_images"] == 2 * len(photos)

"""`saev steer`, `saev evaluate` and `saev probe` on hostile input: probe and class-name files that
are not regular files or hold NaN, wrong shapes or wrong fields; edits too large for float32;
folders where no image is readable; an SAE spliced into another ViT or onto other tokens than it
was trained on; and options that cannot mean anything. Each ends in `saev: error: ...`, exit 2,
without a traceback, a hang or a NaN in a report."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save

import saev.nn
from saev.activations import make_img_transform, make_vit
from saev.cli import main
from saev.errors import ConfigError
from saev.steering import SplicedVit, load_probe, save_probe
from saev.steering import probe_format as probe_format_module
from saev.steering.effects import Counts
from saev.steering.heads import Head, builtin_head
from saev.steering.inputs import spliced_model
from saev.steering.probe_format import FORMAT, LinearProbe
from saev.steering.reconstruction import evaluate_splice
from tests.test_hardening_cli import run_cli
from tests.test_probe import VIT, write_pairs
from tests.test_steering import random_sae
from tests.test_steering_commands import scene  # noqa: F401 (a fixture)

DROP = object()
"""A probe field left out of the file."""


def strict_json(path: pathlib.Path) -> Any:
    """The JSON in `path`, failing on NaN and infinities (which `json` writes, but JSON lacks)."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def refused_within(args: list[str], seconds: float = 120) -> str:
    """`saev ARGS` in a child process, killed after `seconds`: stderr when it exits with status 2
    without a traceback. Opening a FIFO for reading waits for a writer forever, and safetensors
    does it holding the GIL, so no thread of this process could time it out."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "saev", *args], capture_output=True, text=True, timeout=seconds
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"saev {args[0]} still running after {seconds} s") from None
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def probe_file(path: pathlib.Path, *, tensors: dict | None = None, **fields: Any) -> pathlib.Path:
    """A probe file for the built-in ViT (d_vit 128, classes red and blue), with `tensors` and
    `fields` replacing its own (DROP leaves a field out)."""
    meta = {
        "classes": ["red", "blue"],
        "task": "classification",
        "pool": "cls",
        "vit_family": "builtin",
        "vit_ckpt": "shapes-vit",
        "metrics": {},
        "grid": [],
        "ignore_label": None,
    }
    meta = {k: v for k, v in (meta | fields).items() if v is not DROP}
    g = torch.Generator().manual_seed(0)
    weights = {"weight": torch.randn(128, 2, generator=g), "bias": torch.zeros(2)} | (tensors or {})
    path.write_bytes(save(weights, metadata={"format": FORMAT, "probe": json.dumps(meta)}))
    return path


def steer_args(
    root: pathlib.Path, tmp_path: pathlib.Path, *extra: str, images: str | None = None
) -> list[str]:
    """`saev steer` on the first image of `root` (the scene fixture), or on `images`."""
    image = images or str(sorted((root / "syn" / "images").iterdir())[0])
    sae = str(root / "sae.safetensors")
    return ["steer", image, "--sae", sae, *extra, "--out", str(tmp_path / "out")]


@pytest.fixture(scope="module")
def clip_sae(tmp_path_factory, tiny_clip) -> pathlib.Path:
    """An SAE of the tiny CLIP's block -2 patches, recording that ViT."""
    sae = random_sae(64, -2)
    sae.provenance = saev.nn.Provenance("clip", tiny_clip, -2, "patches")
    path = tmp_path_factory.mktemp("clip-sae") / "sae.safetensors"
    saev.nn.dump(path, sae)
    return path


# 1. Probe files


@pytest.mark.slow
@pytest.mark.parametrize("what", ["fifo", "folder", "missing"])
@pytest.mark.parametrize("command", ["steer", "evaluate"])
def test_a_probe_path_that_is_not_a_file_is_refused_by_kind(scene, tmp_path, capsys, what, command):  # noqa: F811
    probe = tmp_path / "probe.safetensors"
    if what == "fifo":
        os.mkfifo(probe)
    elif what == "folder":
        probe.mkdir()
    args = steer_args(
        scene, tmp_path, "--head", str(probe), *(["--edit", "3=0"] if command == "steer" else [])
    )
    args = [command, *args[1:]]
    err = refused_within(args) if what == "fifo" else run_cli(args, capsys)
    expected = {"fifo": "is a FIFO, not a probe file", "folder": "is a folder, not a probe file"}
    assert f"{probe}: {expected.get(what, 'no such probe file')}" in err
    assert not (tmp_path / "out" / "report.json").exists()


@pytest.mark.parametrize(
    "tensors, fields, message",
    [
        ({"weight": torch.full((128, 2), float("nan"))}, {}, "tensor 'weight' holds 256 NaN and 0 infinite"),
        ({"bias": torch.tensor([0.0, float("inf")])}, {}, "tensor 'bias' holds 0 NaN and 1 infinite"),
        ({"weight": torch.zeros(2)}, {}, "tensor 'weight' should have shape [d_vit, classes] with 2 classes"),
        ({"weight": torch.zeros(128, 2, 1)}, {}, "tensor 'weight' should have shape"),
        ({"weight": torch.zeros(128, 3)}, {}, "tensor 'weight' should have shape [d_vit, classes] with 2"),
        ({"bias": torch.zeros(2, 1)}, {}, "tensor 'bias' should have shape [classes] with 2 classes"),
        ({"weight": torch.zeros(128, 2, dtype=torch.int64)}, {}, "tensor 'weight' is torch.int64"),
        (
            {"weight": torch.full((128, 2), 1e300, dtype=torch.float64)},
            {},
            "'weight' holds 0 NaN and 256 inf",
        ),
        ({"extra": torch.zeros(1)}, {}, "the file has ['bias', 'extra', 'weight']"),
        (
            {},
            {"task": "bogus"},
            "probe field 'task' is 'bogus'; expected one of classification, segmentation",
        ),
        ({}, {"pool": "bogus"}, "probe field 'pool' is 'bogus'; expected one of cls, mean"),
        ({}, {"classes": ["red", "red"]}, "probe field 'classes' names ['red'] more than once"),
        ({}, {"classes": "red,blue"}, "probe field 'classes' must be a list of non-empty strings"),
        ({}, {"classes": ["red", 7]}, "probe field 'classes' must be a list of non-empty strings"),
        ({}, {"classes": ["red", ""]}, "probe field 'classes' must be a list of non-empty strings"),
        ({}, {"vit_family": 3}, "probe field 'vit_family' must be a string"),
        ({}, {"metrics": [1]}, "probe field 'metrics' must be an object"),
        ({}, {"grid": {"lr": 1}}, "probe field 'grid' must be a list of objects"),
        ({}, {"ignore_label": "255"}, "probe field 'ignore_label' must be an integer"),
        ({}, {"ignore_label": True}, "probe field 'ignore_label' must be an integer"),
        ({}, {"task": DROP}, "incomplete probe: lacks the field(s) ['task']"),
        ({}, {"colour": "red"}, "unknown probe field(s) ['colour']"),
    ],
)
def test_probe_contents_are_checked_naming_file_and_field(tmp_path, tensors, fields, message):
    path = probe_file(tmp_path / "p.safetensors", tensors=tensors, **fields)
    with pytest.raises(ConfigError) as info:
        load_probe(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_probe_files_that_are_no_probes(tmp_path):
    good = probe_file(tmp_path / "good.safetensors").read_bytes()
    cases = {
        "empty": (b"", "not a safetensors file (0 bytes)"),
        "truncated": (good[:-10], "truncated or corrupt"),
        "short": (good[:200], "its header declares"),
        "text": (b"hello, I am not a probe at all", "not a safetensors file"),
        "other": (
            save({"w": torch.zeros(1)}, metadata={"format": "x"}),
            "not a saev probe (metadata format 'x'",
        ),
        "fields": (
            save({"w": torch.zeros(1)}, metadata={"format": FORMAT, "probe": "{"}),
            "'probe' is not valid JSON",
        ),
        "list": (
            save({"w": torch.zeros(1)}, metadata={"format": FORMAT, "probe": "[]"}),
            "must be a JSON object",
        ),
    }
    for name, (blob, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(blob)
        with pytest.raises(ConfigError) as info:
            load_probe(path)
        assert str(info.value).startswith(f"{path}: ") and message in str(info.value), name


def test_a_probe_is_read_once(tmp_path, monkeypatch):
    path = probe_file(tmp_path / "p.safetensors")
    opened = []
    real_open = pathlib.Path.open

    def counting_open(self, *args, **kwargs):
        opened.append(self)
        return real_open(self, *args, **kwargs)

    def second_reader(*args, **kwargs):
        raise AssertionError("the probe file was read a second time")

    monkeypatch.setattr(pathlib.Path, "open", counting_open)
    monkeypatch.setattr(probe_format_module, "load_file", second_reader, raising=False)
    monkeypatch.setattr(probe_format_module, "open", second_reader, raising=False)
    probe = load_probe(path)
    assert opened == [path] and probe.classes == ("red", "blue")


def test_a_nan_probe_fails_evaluate_instead_of_reporting_nan(scene, tmp_path, capsys):  # noqa: F811
    probe = probe_file(tmp_path / "nan.safetensors", tensors={"weight": torch.full((128, 2), float("nan"))})
    args = ["evaluate", str(scene / "syn" / "images"), "--sae", str(scene / "sae.safetensors")]
    err = run_cli([*args, "--head", str(probe), "--out", str(tmp_path / "out")], capsys)
    assert f"{probe}: tensor 'weight' holds 256 NaN" in err
    assert not (tmp_path / "out" / "report.json").exists()


def test_a_probe_of_another_width_or_pool_is_refused(scene, tmp_path, capsys):  # noqa: F811
    narrow = probe_file(tmp_path / "narrow.safetensors", tensors={"weight": torch.zeros(64, 2)})
    err = run_cli(steer_args(scene, tmp_path, "--head", str(narrow), "--edit", "3=0"), capsys)
    assert f"{narrow}: reads 64-dim features; builtin/shapes-vit makes 128" in err
    other = probe_file(tmp_path / "other.safetensors", vit_ckpt="another-vit")
    err = run_cli(steer_args(scene, tmp_path, "--head", str(other), "--edit", "3=0"), capsys)
    assert f"{other}: a probe of builtin/another-vit, not of builtin/shapes-vit" in err


@pytest.mark.slow
def test_probe_class_names_file_is_checked(tmp_path, capsys):
    images, masks = write_pairs(tmp_path / "d", 3)
    base = ["probe", *VIT, "--images", str(images), "--masks", str(masks), "--out", str(tmp_path / "o")]
    fifo = tmp_path / "names.txt"
    os.mkfifo(fifo)
    assert f"{fifo}: is a FIFO, not a class-name file" in refused_within([*base, "--class-names", str(fifo)])
    twice = tmp_path / "twice.txt"
    twice.write_text("background\nthing\nthing\n")
    err = run_cli([*base, "--class-names", str(twice)], capsys)
    assert "class names ['thing'] appear on several lines" in err


def test_probe_says_why_no_image_was_readable(tmp_path, capsys):
    for cls in ("red", "blue"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        (tmp_path / "imgs" / cls / "x.png").write_bytes(b"not a png")
    err = run_cli(["probe", *VIT, "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o")], capsys)
    assert (
        "none of the 2 image(s) could be read" in err
        and "blue/x.png: not an image Pillow can identify" in err
    )


# 2. clip-zero-shot class lists


@pytest.mark.slow
@pytest.mark.parametrize(
    "content, message",
    [
        ("fifo", "is a FIFO, not a class-name file"),
        ("folder", "is a folder, not a class-name file"),
        (b"\xff\xfe cat\n", "not UTF-8 text"),
        (b"\n  \n", "needs at least two class names, one per line; found 0"),
        (b"cat\n", "needs at least two class names, one per line; found 1"),
        (b"cat\ndog\n cat \n", "class names ['cat'] appear more than once"),
    ],
)
def test_clip_zero_shot_class_lists_are_checked(clip_sae, tmp_path, capsys, photos, content, message):
    classes = tmp_path / "classes.txt"
    if content == "fifo":
        os.mkfifo(classes)
    elif content == "folder":
        classes.mkdir()
    else:
        classes.write_bytes(content)
    args = ["steer", str(photos[0]), "--sae", str(clip_sae), "--head", f"clip-zero-shot:{classes}"]
    args = [*args, "--edit", "3=0", "--out", str(tmp_path / "out")]
    err = refused_within(args) if content == "fifo" else run_cli(args, capsys)
    assert f"{classes}: {message}" in err


# 3. Edits whose result is not finite


@pytest.mark.parametrize(
    "edits, message",
    [
        (["5=1e38x"], "edit 5=1e+38x: "),
        (["5=+1e38"] * 4, "edits 5=+1e+38, 5=+1e+38, 5=+1e+38, 5=+1e+38: the code of latent 5 reaches inf"),
        (["5=1e30", "6=*2"], "edits 5=1e+30, 6=*2: the model's output is not finite after it"),
    ],
)
def test_edits_too_large_for_float32_are_refused(scene, tmp_path, capsys, edits, message):  # noqa: F811
    err = run_cli(steer_args(scene, tmp_path, "--head", "builtin-image", "--edit", *edits), capsys)
    assert message in err and "use smaller values" in err
    assert not (tmp_path / "out" / "report.json").exists()


def test_finite_codes_whose_decoding_overflows_are_refused(scene, tmp_path, capsys):  # noqa: F811
    """Decoding a finite code of 3e38 overflows where a decoder weight times the scale exceeds 1."""
    sae = saev.nn.load(scene / "sae.safetensors")
    with torch.no_grad():
        sae.W_dec.mul_(10)
    saev.nn.dump(tmp_path / "loud.safetensors", sae)
    args = steer_args(scene, tmp_path, "--head", "builtin-image", "--edit", "5=3e38")
    args[args.index("--sae") + 1] = str(tmp_path / "loud.safetensors")
    err = run_cli(args, capsys)
    assert (
        "edit 5=3e+38: codes up to 3e+38 make the activations written back into the residual stream reach"
        in err
    )


def test_an_evaluate_value_too_large_is_refused(scene, tmp_path, capsys):  # noqa: F811
    args = steer_args(scene, tmp_path, "--head", "builtin-patch", "--evaluate", "--latents", "colour:red=3")
    err = run_cli([*args, "--value", "1e38"], capsys)
    assert "where active" in err and "use smaller values" in err


def test_undefined_rates_are_null_never_nan(scene, tmp_path, capsys, caplog):  # noqa: F811
    image = sorted((scene / "syn" / "images").iterdir())[0]
    vit = make_vit("builtin", "shapes-vit")
    head = builtin_head(vit, "image")
    spliced = SplicedVit(vit, saev.nn.load(scene / "sae.safetensors"))
    x = make_img_transform("builtin", "shapes-vit")(Image.open(image))[None]
    predicted = head.predict(head.logits(spliced(x)))[0]
    absent = head.classes[int(torch.nonzero(~predicted)[0])]
    args = steer_args(scene, tmp_path, "--head", "builtin-image", "--evaluate", "--latents", f"{absent}=3")
    main(args)
    err = capsys.readouterr().err
    [test] = strict_json(tmp_path / "out" / "report.json")["tests"]
    assert test["classes"][0]["edit"]["target_rate"] is None and test["medians"]["target"] is None
    assert f"{absent} never predicted on these images before the edit" in caplog.text
    assert f"| {absent} | 3 | - |" in err
    assert json.dumps(Counts().to_dict(), allow_nan=False)


def test_recovered_is_null_when_ablation_changes_nothing(scene, caplog):  # noqa: F811
    vit = make_vit("builtin", "shapes-vit")
    spliced = SplicedVit(vit, saev.nn.load(scene / "sae.safetensors"))
    constant = Head("constant", ("a", "b"), "image", False, lambda x: torch.zeros(x.shape[0], 2))
    transform = make_img_transform("builtin", "shapes-vit")
    x = torch.stack([transform(Image.open(p)) for p in sorted((scene / "syn" / "images").iterdir())[:3]])
    ev = evaluate_splice(spliced, constant, [(x, None)])
    assert ev.recovered_zero is None and ev.recovered_mean is None
    assert json.dumps(ev.to_dict(), allow_nan=False)
    assert "zero ablation leaves the loss as it is" in caplog.text


def test_evaluate_reports_hold_no_nan(scene, tmp_path, capsys):  # noqa: F811
    args = ["evaluate", str(scene / "syn" / "images"), "--sae", str(scene / "sae.safetensors")]
    main([*args, "--head", "builtin-image", "--out", str(tmp_path / "ev")])
    assert strict_json(tmp_path / "ev" / "report.json")["evaluations"][0]["n_units"] == 12


# 4. Nothing readable


@pytest.mark.parametrize(
    "command, extra",
    [
        ("steer", ["--edit", "3=0"]),
        ("steer", ["--edit", "3=-1x"]),
        ("steer", ["--evaluate", "--latents", "colour:red=3"]),
        ("steer", ["--evaluate"]),
        ("evaluate", []),
    ],
)
def test_a_folder_without_a_readable_image_fails(scene, tmp_path, capsys, command, extra):  # noqa: F811
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "imgs" / "empty.jpg").write_bytes(b"")
    args = steer_args(scene, tmp_path, "--head", "builtin-patch", *extra, images=str(tmp_path / "imgs"))
    err = run_cli([command, *args[1:]], capsys)
    assert "none of the 2 image(s) could be read: " in err
    assert f"{tmp_path / 'imgs' / 'broken.png'}: not an image Pillow can identify" in err
    assert not (tmp_path / "out" / "report.json").exists()


# 5. Provenance: tokens and ViT


def test_other_tokens_than_the_sae_was_trained_on_need_force(scene, tmp_path, capsys):  # noqa: F811
    err = run_cli(
        steer_args(scene, tmp_path, "--head", "builtin-patch", "--edit", "3=0", "--tokens", "all"), capsys
    )
    assert "it was trained on patches tokens, not all tokens" in err and "--force" in err
    vit = make_vit("builtin", "shapes-vit")
    sae = saev.nn.load(scene / "sae.safetensors")
    assert SplicedVit(vit, sae, tokens="all", force=True).tokens == "all"
    sae.provenance = saev.nn.Provenance("builtin", "shapes-vit", -2, "bogus")
    with pytest.raises(ConfigError, match="the SAE records tokens 'bogus'"):
        SplicedVit(vit, sae)


def test_another_vit_of_the_same_width_needs_force(clip_sae, tmp_path, capsys, tiny_clip, photos):
    sae = saev.nn.load(clip_sae)
    sae.provenance = saev.nn.Provenance("clip", "ViT-B-16/openai", -2, "patches")
    saev.nn.dump(tmp_path / "sae.safetensors", sae)
    args = ["evaluate", str(photos[0]), "--sae", str(tmp_path / "sae.safetensors"), "--head", "builtin-patch"]
    err = run_cli([*args, "--vit-ckpt", tiny_clip, "--out", str(tmp_path / "out")], capsys)
    assert f"it was trained on clip/ViT-B-16/openai, not clip/{tiny_clip}" in err
    spliced, _ = spliced_model(sae, None, tiny_clip, None, None, force=True)
    assert spliced.vit.ckpt == tiny_clip
    with pytest.raises(ConfigError, match="trained on clip/ViT-B-16/openai, not clip/"):
        SplicedVit(spliced.vit, sae)


# 6. Other options that cannot mean anything


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--edit", "3=0", "--patches", "1,1,2"], "--patches '1,1,2': patch(es) [1] given more than once"),
        (["--edit", "3=0", "--patches", ","], "--patches ',': names no patch"),
        (["--edit", "3=0", "--patches", "-1"], "patches [-1] out of range"),
        (["--evaluate", "--edit", "3=0"], "--evaluate applies its own edit"),
        (["--evaluate", "--patches", "3"], "--evaluate applies its own edit"),
        (["--edit", "3=0", "--latents", "colour:red=3"], "--latents chooses the latents of --evaluate"),
        (["--edit", "3=0", "--batch-size", "0"], "--batch-size must be positive"),
        (["--edit", "3=0", "--head", "builtin-image", "builtin-image"], "a head is given twice"),
    ],
)
def test_steer_options_that_cannot_mean_anything(scene, tmp_path, capsys, extra, message):  # noqa: F811
    heads = [] if "--head" in extra else ["--head", "builtin-patch"]
    err = run_cli(steer_args(scene, tmp_path, *heads, *extra), capsys)
    assert message in err


def test_patches_with_a_cls_sae_are_refused(tmp_path, capsys, scene):  # noqa: F811
    sae = random_sae(128, -2, "cls")
    sae.provenance = saev.nn.Provenance("builtin", "shapes-vit", -2, "cls")
    saev.nn.dump(tmp_path / "cls.safetensors", sae)
    image = str(sorted((scene / "syn" / "images").iterdir())[0])
    args = ["steer", image, "--sae", str(tmp_path / "cls.safetensors"), "--head", "builtin-image"]
    err = run_cli([*args, "--edit", "3=0", "--patches", "3", "--out", str(tmp_path / "o")], capsys)
    assert "--patches: the SAE reads only the [CLS] token here" in err


@pytest.mark.parametrize("damage", ["not json", "other image"])
def test_a_malformed_labels_file_is_named(scene, tmp_path, capsys, damage):  # noqa: F811
    root = tmp_path / "syn"
    shutil.copytree(scene / "syn", root)
    if damage == "not json":
        (root / "labels.json").write_text("{")
        message = f"{root / 'labels.json'}: "
    else:
        shutil.copy(root / "images" / "000000.png", root / "images" / "extra.png")
        message = f"{root / 'labels.json'}: no labels for 1 of the 13 image(s)"
    args = steer_args(scene, tmp_path, "--head", "builtin-patch", "--evaluate", images=str(root / "images"))
    assert message in run_cli(args, capsys)


def test_evaluate_refuses_images_of_no_class_for_a_single_label_head(scene, tmp_path, capsys):  # noqa: F811
    images = sorted((scene / "syn" / "images").iterdir())
    for folder, image in (("red", images[0]), ("blue", images[1]), ("elsewhere", images[2])):
        (tmp_path / "imgs" / folder).mkdir(parents=True)
        shutil.copy(image, tmp_path / "imgs" / folder / image.name)
    probe = probe_file(tmp_path / "p.safetensors")
    args = ["evaluate", str(tmp_path / "imgs"), "--sae", str(scene / "sae.safetensors"), "--head", str(probe)]
    err = run_cli([*args, "--out", str(tmp_path / "out")], capsys)
    assert f"{tmp_path / 'imgs' / 'elsewhere' / images[2].name}: its labels give some images no class" in err


def test_steer_draws_images_of_the_same_name_apart(scene, tmp_path, capsys):  # noqa: F811
    image = sorted((scene / "syn" / "images").iterdir())[0]
    for folder in ("a", "b"):
        (tmp_path / "imgs" / folder).mkdir(parents=True)
        shutil.copy(image, tmp_path / "imgs" / folder / "x.png")
    main(
        steer_args(scene, tmp_path, "--head", "builtin-patch", "--edit", "3=0", images=str(tmp_path / "imgs"))
    )
    pngs = [r["png"] for r in strict_json(tmp_path / "out" / "report.json")["images"]]
    assert len(set(pngs)) == 2 and all(pathlib.Path(p).is_file() for p in pngs)


@pytest.mark.slow
def test_a_visuals_topk_that_is_a_fifo_is_refused(scene, tmp_path, capsys):  # noqa: F811
    (tmp_path / "v").mkdir()
    os.mkfifo(tmp_path / "v" / "topk.safetensors")
    args = steer_args(
        scene, tmp_path, "--head", "builtin-patch", "--edit", "3=-1x", "--visuals", str(tmp_path / "v")
    )
    assert "topk.safetensors: is a FIFO, not a topk file" in refused_within(args)


def test_a_saved_probe_loads_back(tmp_path):
    """What `saev probe` writes passes every check of `load_probe`."""
    probe = LinearProbe(
        torch.randn(128, 3),
        torch.zeros(3),
        ("a", "b", "c"),
        "segmentation",
        "mean",
        "builtin",
        "shapes-vit",
        {"val_accuracy": 1.0},
        [{"lr": 0.1}],
        255,
    )
    save_probe(tmp_path / "p.safetensors", probe)
    again = load_probe(tmp_path / "p.safetensors")
    assert (
        again.classes == probe.classes
        and again.ignore_label == 255
        and torch.equal(again.weight_DC, probe.weight_DC)
    )
    assert np.isfinite(again.weight_DC.numpy()).all()

"""A reduced `saev quickstart`, run through the real command, on generated images and on photographs."""

import json

import pytest
from safetensors import safe_open

from saev import synthetic
from saev.cli import main


def quickstart(capsys, *args: str) -> list[str]:
    main(["quickstart", "--n-latents", "16", "--n-train", "150000", *args])
    return capsys.readouterr().out.strip().splitlines()


@pytest.mark.slow
def test_reduced_quickstart_finds_concepts_and_builds_the_gallery(tmp_path, capsys):
    out = tmp_path / "qs"
    lines = quickstart(capsys, "--out", str(out), "--n-images", "600", "--n-train", "600000")

    index = out / "gallery" / "index.html"
    assert lines[-3:-1] == [f"gallery: {index}", f"scorecard: {out / 'bench' / 'index.html'}"]
    assert lines[-1].startswith(f"names: {out / 'names.json'} (") and lines[-1].endswith(
        " of 1,024 latents named, the rest unexplained)"
    )
    report = json.loads((out / "report.json").read_text())
    names = json.loads((out / "names.json").read_text())
    assert report["names"] == {"file": str(out / "names.json"), "named": names["n_named"], "latents": 1024}
    assert [row["concept"] for row in report["concepts"]] == list(synthetic.CONCEPTS)
    for row in report["concepts"]:
        for side in ("latent", "neuron"):
            score = row[side]
            assert 0 <= score["f1"] <= 1 and 0 <= score["precision"] <= 1 and 0 <= score["recall"] <= 1
    # Even this small run separates concepts better than single neurons do.
    assert report["median_f1"]["sae"] > 0.6
    assert report["median_f1"]["sae"] > report["median_f1"]["neuron"]
    assert report["eval"]["fve"] > 0.8
    assert any(line.startswith("median F1: SAE latents") for line in lines)

    # Each concept's best latent is rendered and annotated with the concept it detects.
    for row in report["concepts"]:
        page = out / "gallery" / "latents" / f"{row['latent']['unit']}.html"
        assert f"best detector of {row['concept']}" in page.read_text()
    assert "best detector of shape:" in index.read_text()
    with safe_open(out / "gallery" / "topk.safetensors", "pt") as f:
        assert f.get_tensor("values").shape[1] == 12

    # Ground truth for steering: suppressing each concept's latent where it fires removes the concept
    # from the patch head's predictions and little else; a random latent removes nothing.
    patch = report["steering"]["builtin-patch"]["medians"]
    assert patch["target"] >= 0.9 and patch["other"] <= 0.05 and patch["random_latent_target"] <= 0.1
    assert "builtin-image" in report["steering"]  # measured and reported the same way
    assert any(line.startswith("steering, builtin-patch:") for line in lines)
    # The spliced SAE keeps what the heads need, against zero and mean ablation.
    for head in ("builtin-patch", "builtin-image"):
        assert (
            report["splice"][head]["recovered_zero"] >= 0.95
            and report["splice"][head]["recovered_mean"] >= 0.95
        )
    # Each concept's latent page shows a before/after steering example.
    for row in report["concepts"]:
        latent = row["latent"]["unit"]
        assert (
            f'src="../steering/{latent}.png"' in (out / "gallery" / "latents" / f"{latent}.html").read_text()
        )
        assert (out / "gallery" / "steering" / f"{latent}.png").exists()


@pytest.mark.slow
def test_rerun_reuses_finished_steps(tmp_path, capsys):
    out = tmp_path / "qs"
    quickstart(capsys, "--out", str(out), "--n-images", "200", "--n-train", "20000")
    sae = next(out.glob("runs/*/sae.safetensors"))
    mtime = sae.stat().st_mtime_ns
    quickstart(capsys, "--out", str(out), "--n-images", "200", "--n-train", "20000")
    assert sae.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_quickstart_on_your_own_images(tmp_path, capsys, photos_dir):
    out = tmp_path / "qs"
    lines = quickstart(
        capsys,
        "--out",
        str(out),
        "--images",
        str(photos_dir),
        "--vit-family",
        "builtin",
        "--layer",
        "-1",
        "--n-train",
        "5000",
        "--batch-size",
        "64",
    )
    report = json.loads((out / "report.json").read_text())
    assert report["concepts"] == [] and "median_f1" not in report
    assert lines[-1] == f"gallery: {out / 'gallery' / 'index.html'}"
    assert not any(line.startswith("concept") for line in lines)


def test_generated_images_need_the_builtin_vit(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["quickstart", "--out", str(tmp_path), "--vit-family", "clip", "--vit-ckpt", "x/y"])
    assert err.value.code == 2
    assert "--images" in capsys.readouterr().err

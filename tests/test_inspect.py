"""`saev inspect` end to end: PNG and JSON per image, unreadable images skipped."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import saev.nn
import saev.visuals.inspect
from saev.cli import main
from saev.visuals import summarize


def thing(s: int) -> dict:
    """The automatic name the fixtures give latent s."""
    return {
        "text": f"thing-{s}",
        "source": "concept",
        "level": "patch",
        "f1": 0.84,
        "precision": 0.8,
        "recall": 0.88,
    }


def make_sae(path, seed=0):
    sae = saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=64, d_sae=128, seed=seed))
    with torch.no_grad():
        sae.b_enc.fill_(-0.3)
    sae.provenance = saev.nn.Provenance(layer=-2, tokens="patches")
    saev.nn.dump(path, sae)
    return sae


def test_summarize_ranks_by_max_patch_then_index():
    codes = torch.zeros(4, 6)
    codes[0, 3] = 2.0
    codes[1, 1] = 2.0
    codes[2, 1] = 0.5
    codes[3, 5] = 1.0
    top = summarize(codes, 5)
    assert [s.latent for s in top] == [1, 3, 5]
    assert top[0].sum == 2.5 and top[0].active_patches == [1, 2]


def test_inspect_command_writes_png_and_json(tmp_path, tiny_clip, photos, capsys):
    make_sae(tmp_path / "sae.safetensors")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    images = [str(p) for p in photos[:3]] + [str(bad)]
    main(
        [
            "inspect",
            *images,
            "--sae",
            str(tmp_path / "sae.safetensors"),
            "--vit-family",
            "clip",
            "--vit-ckpt",
            tiny_clip,
            "--top",
            "3",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr()
    assert "skipped 1 unreadable image" in out.err
    for p in photos[:3]:
        png = tmp_path / "out" / f"{p.stem}.png"
        record = json.loads((tmp_path / "out" / f"{p.stem}.json").read_text())
        assert record["layer"] == -2  # taken from the SAE's provenance
        assert 1 <= len(record["latents"]) <= 3
        maxes = [lat["max"] for lat in record["latents"]]
        assert maxes == sorted(maxes, reverse=True) and maxes[0] > 0
        with Image.open(png) as img:
            assert img.height == 224 + 18 and img.width > 224 * (1 + len(record["latents"]))
            assert np.asarray(img).std() > 10


@pytest.mark.slow
def test_inspect_errors_are_one_line(tmp_path, tiny_clip, photos):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "saev",
            "inspect",
            str(photos[0]),
            "--sae",
            str(tmp_path / "missing.pt"),
            "--layer",
            "1",
            "--vit-family",
            "clip",
            "--vit-ckpt",
            tiny_clip,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"saev: error: {tmp_path / 'missing.pt'}: no such file or folder."


DENSE = 7
"""The latent make_dense_sae makes fire on every patch."""


def make_dense_sae(path):
    sae = make_sae(path)
    with torch.no_grad():
        sae.b_enc[DENSE] = 100.0
    saev.nn.dump(path, sae)


def write_visuals(folder, d_sae=128, dense=(DENSE,)):
    """A visuals folder's latents.json as `saev visuals` writes it, with the names automatic naming
    adds: even latents named, odd ones scored but unexplained (null), latent 1 never named."""
    rows = []
    for s in range(d_sae):
        row = {"latent": s, "freq": 0.5 if s in dense else 0.01, "dense": s in dense}
        if s != 1:
            row["name"] = thing(s) if s % 2 == 0 else None
        rows.append(row)
    folder.mkdir()
    (folder / "latents.json").write_text(json.dumps({"latents": rows}))
    return folder


def inspect(tmp_path, tiny_clip, images, *extra):
    out = tmp_path / "out"
    args = ["inspect", *map(str, images), "--sae", str(tmp_path / "sae.safetensors"), "--vit-family", "clip"]
    main([*args, "--vit-ckpt", tiny_clip, "--top", "3", "--out", str(out), *extra])
    return [json.loads((out / f"{p.stem}.json").read_text()) for p in images], out


def test_inspect_leaves_out_the_visuals_dense_latents_and_names_the_drawn_ones(tmp_path, tiny_clip, photos):
    make_dense_sae(tmp_path / "sae.safetensors")
    visuals = write_visuals(tmp_path / "visuals")
    records, out = inspect(tmp_path, tiny_clip, photos[:2], "--visuals", str(visuals))
    for p, record in zip(photos[:2], records, strict=True):
        drawn = [lat["latent"] for lat in record["latents"]]
        assert DENSE not in drawn and record["hidden_dense"] == 1 and drawn
        for lat in record["latents"]:
            s = lat["latent"]
            if s == 1:
                assert "name" not in lat
            else:
                assert lat["name"] == (None if s % 2 else thing(s))
        with Image.open(out / f"{p.stem}.png") as img:  # a second caption line holds the name
            assert img.height == 224 + 18 + 18
    records, _ = inspect(tmp_path, tiny_clip, photos[:2], "--visuals", str(visuals), "--dense")
    assert all(r["latents"][0]["latent"] == DENSE and r["hidden_dense"] == 0 for r in records)


def test_without_visuals_few_images_keep_dense_latents_and_say_so_once(tmp_path, tiny_clip, photos, caplog):
    make_dense_sae(tmp_path / "sae.safetensors")
    records, _ = inspect(tmp_path, tiny_clip, photos[:3])
    assert all(r["latents"][0]["latent"] == DENSE and r["hidden_dense"] == 0 for r in records)
    assert all("name" not in lat for r in records for lat in r["latents"])
    warnings = [r.getMessage() for r in caplog.records if "dense latents are kept" in r.getMessage()]
    assert warnings == [
        "dense latents are kept: which latents are dense is not known without --visuals (a saev visuals "
        "folder of this SAE), and 3 image(s) are too few to estimate it (at least 100)."
    ]


def test_without_visuals_enough_images_estimate_the_dense_latents(
    tmp_path, tiny_clip, photos, caplog, monkeypatch
):
    monkeypatch.setattr(saev.visuals.inspect, "MIN_IMAGES_TO_ESTIMATE", 3)
    make_dense_sae(tmp_path / "sae.safetensors")
    records, _ = inspect(tmp_path, tiny_clip, photos[:3])
    assert all(
        DENSE not in [lat["latent"] for lat in r["latents"]] and r["hidden_dense"] >= 1 for r in records
    )
    assert any("estimated on the 3 inspected images" in r.getMessage() for r in caplog.records)
    assert not any("dense latents are kept" in r.getMessage() for r in caplog.records)


def test_a_visuals_folder_of_another_sae_is_a_clear_error(tmp_path, tiny_clip, photos, capsys):
    make_sae(tmp_path / "sae.safetensors")
    visuals = write_visuals(tmp_path / "visuals", d_sae=5, dense=())
    with pytest.raises(SystemExit):
        inspect(tmp_path, tiny_clip, photos[:1], "--visuals", str(visuals))
    err = capsys.readouterr().err
    assert f"{visuals / 'latents.json'}: describes 5 latents, but the SAE has 128." in err

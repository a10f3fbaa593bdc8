"""`saev inspect` end to end: PNG and JSON per image, unreadable images skipped."""

import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

import saev.nn
from saev.cli import main
from saev.visuals import summarize


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

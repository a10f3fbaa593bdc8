"""Families added through the registry work end to end: record a store, train a small SAE, build the
gallery, with random-weight models saved locally (offline)."""

import json
import pathlib

import pytest
import timm
import torch
import transformers
from PIL import Image, ImageOps
from safetensors.torch import save_file

from saev.cli import main


def run_pipeline(
    tmp_path: pathlib.Path, photos_dir: pathlib.Path, capsys, family: str, ckpt: str
) -> pathlib.Path:
    """`saev activations`, `saev train`, `saev visuals` as a user runs them; returns the gallery folder."""
    main(
        [
            "activations",
            "--vit-family",
            family,
            "--vit-ckpt",
            ckpt,
            "--images",
            str(photos_dir),
            "--dump-to",
            str(tmp_path / "shards"),
            "--layers",
            "-2",
            "--n-workers",
            "0",
        ]
    )
    store = capsys.readouterr().out.strip().splitlines()[-1]
    main(
        [
            "train",
            "--shards",
            store,
            "--out",
            str(tmp_path / "runs"),
            "--exp-factor",
            "2",
            "--k",
            "8",
            "--n-train",
            "4000",
            "--batch-size",
            "200",
            "--lr-warmup",
            "2",
            "--holdout",
            "0.25",
        ]
    )
    sae = capsys.readouterr().out.strip().splitlines()[-1]
    main(
        [
            "visuals",
            "--sae",
            sae,
            "--shards",
            store,
            "--out",
            str(tmp_path / "gallery"),
            "--top-k",
            "3",
            "--n-latents",
            "4",
        ]
    )
    index = pathlib.Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert index == tmp_path / "gallery" / "index.html" and index.exists()
    return pathlib.Path(store)


@pytest.mark.slow
def test_timm_vit(tmp_path, photos_dir, capsys):
    name = "vit_tiny_patch16_224.augreg_in21k"
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    store = run_pipeline(tmp_path, photos_dir, capsys, "timm", f"{name}/{tmp_path / 'w.safetensors'}")
    assert json.loads((store / "layout.json").read_text())["grid"] == [14, 14]
    meta = json.loads((store / "metadata.json").read_text())
    assert meta["n_patches_per_img"] == 196 and meta["d_vit"] == 192 and meta["n_imgs"] == 8
    latents = json.loads((tmp_path / "gallery" / "latents.json").read_text())["latents"]
    pages = list((tmp_path / "gallery" / "latents").glob("*.html"))
    assert len(latents) == 384 and 0 < len(pages) <= 4
    assert all(len(list((tmp_path / "gallery" / "thumbs" / p.stem).glob("*.jpg"))) > 0 for p in pages)


@pytest.mark.slow
def test_transformers_dinov2_with_registers_non_square(tmp_path, photos_dir, capsys):
    """A Hugging Face DINOv2 with 4 registers and a 56x84 crop: a 4x6 grid, registers dropped, and
    gallery thumbnails with the grid's aspect."""
    torch.manual_seed(0)
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=56,
        patch_size=14,
        num_register_tokens=4,
    )
    folder = tmp_path / "tiny-dinov2-reg"
    transformers.Dinov2WithRegistersModel(config).save_pretrained(folder)
    transformers.BitImageProcessorPil(
        size={"shortest_edge": 96}, crop_size={"height": 56, "width": 84}
    ).save_pretrained(folder)
    # 24 patches an image: the photos and their mirror images give training enough full batches.
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(photos_dir.iterdir()):
        with Image.open(path) as img:
            img.save(photos / path.name)
            ImageOps.mirror(img).save(photos / f"mirror-{path.name}")
    store = run_pipeline(tmp_path, photos, capsys, "hf", str(folder))
    layout = json.loads((store / "layout.json").read_text())
    assert layout["grid"] == [4, 6] and layout["n_registers"] == 4
    meta = json.loads((store / "metadata.json").read_text())
    assert meta["n_patches_per_img"] == 24 and meta["d_vit"] == 32 and meta["n_imgs"] == 16
    thumbs = list((tmp_path / "gallery" / "thumbs").glob("*/*.jpg"))
    assert thumbs
    for thumb in thumbs:
        with Image.open(thumb) as img:
            assert img.size == (224, 149)  # 224 px on the longer side, 6:4 like the grid
    # `saev inspect` reads the family, checkpoint and layer from the SAE and draws the same grid.
    [sae] = (tmp_path / "runs").glob("*/sae.safetensors")
    main(["inspect", str(photos / "chelsea.jpg"), "--sae", str(sae), "--out", str(tmp_path / "inspect")])
    report = json.loads((tmp_path / "inspect" / "chelsea.json").read_text())
    assert report["vit"] == f"hf/{folder}" and report["layer"] == -2 and report["latents"]
    assert all(0 <= p < 24 for latent in report["latents"] for p in latent["active_patches"])
    with Image.open(tmp_path / "inspect" / "chelsea.png") as img:
        assert img.height == 56 + 18  # the 84x56 crop the model saw, with its caption strip

"""`saev visuals` end to end: data files, dead latents, missing images, and the gallery in a real browser."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import saev.data
import saev.nn
from saev.cli import main
from saev.visuals.topk import top_activations
from tests.conftest import launch_chromium, needs_chromium
from tests.test_recording import cli_args


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, tiny_clip, photos_dir):
    tmp = tmp_path_factory.mktemp("gallery")
    images = tmp / "images"
    shutil.copytree(photos_dir, images / "photos")
    main(cli_args(tiny_clip, images, tmp / "shards"))
    store_dir = next((tmp / "shards").iterdir())
    sae = saev.nn.SparseAutoencoder(
        saev.nn.SaeConfig(d_vit=64, d_sae=48, activation=saev.nn.TopK(k=6), seed=2)
    )
    with torch.no_grad():
        sae.b_enc[7] = -1e6  # never fires: must be listed as dead
    sae.provenance = saev.nn.Provenance(layer=-2)
    saev.nn.dump(tmp / "sae.safetensors", sae)
    (images / "photos" / "rocket.jpg").unlink()  # moved away after recording
    main(
        [
            "visuals",
            "--sae",
            str(tmp / "sae.safetensors"),
            "--shards",
            str(store_dir),
            "--layer",
            "-2",
            "--top-k",
            "4",
            "--n-latents",
            "10",
            "--out",
            str(tmp / "out"),
        ]
    )
    return tmp, store_dir, sae


def test_data_files_match_the_library_pass(gallery):
    tmp, store_dir, sae = gallery
    out = tmp / "out"
    saved = load_file(out / "topk.safetensors")
    top = top_activations(sae, saev.data.open_shards(store_dir), -2, 4, progress=False)
    assert torch.equal(saved["values"], top.values_SK) and torch.equal(saved["image_i"], top.image_i_SK)
    rendered = saved["patch_map_latents"].tolist()
    assert len(rendered) == 10 and 7 not in rendered
    assert torch.equal(saved["patch_maps"], top.patch_maps_SKP[rendered])
    latents = json.loads((out / "latents.json").read_text())["latents"]
    assert latents[7]["dead"] and latents[7]["top"] == [] and not latents[7]["rendered"]
    assert not (out / "latents" / "7.html").exists()
    for s in rendered:
        assert (out / "latents" / f"{s}.html").exists()
        thumbs = sorted((out / "thumbs" / str(s)).glob("*.jpg"))
        assert len(thumbs) == sum(i >= 0 for i in top.image_i_SK[s].tolist())
        with Image.open(thumbs[0]) as img:
            assert img.format == "JPEG" and img.size == (224, 224)
    assert thumbs[0].stat().st_size < 40_000


def test_missing_images_become_placeholders(gallery, capsys):
    tmp, _, _ = gallery
    latents = json.loads((tmp / "out" / "latents.json").read_text())["latents"]
    rocket = [
        (lat["latent"], r)
        for lat in latents
        if lat["rendered"]
        for r, top in enumerate(lat["top"])
        if top["source"].endswith("rocket.jpg")
    ]
    assert rocket, "the moved image should be among some rendered latent's top images"
    s, r = rocket[0]
    page = (tmp / "out" / "latents" / f"{s}.html").read_text()
    assert "rocket.jpg (image missing)" in page
    with Image.open(tmp / "out" / "thumbs" / str(s) / f"{r}.jpg") as img:
        arr = np.asarray(img).astype(int)
    assert abs(arr.mean() - 200) < 20  # the grey placeholder tile


@needs_chromium
def test_gallery_opens_from_file_urls_without_errors(gallery, tmp_path):
    from playwright.sync_api import sync_playwright

    out = gallery[0] / "out"
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((out / "index.html").as_uri())
        assert (
            page.locator("#count").inner_text() == "47 of 48 latents"
        )  # the dead latent is hidden by default
        page.check("#dead")
        assert (
            "48 of 48" in page.locator("#count").inner_text()
            and "(dead)" in page.locator("#latents").inner_text()
        )
        page.fill("#lo", "0.5")  # no latent fires on more than 10**0.5 of tokens
        assert page.locator("#count").inner_text().startswith("0 of")
        page.fill("#lo", "")
        page.locator("#latents th[data-key=latent]").click()
        first = page.locator("#latents tbody tr td").first.inner_text()
        assert first.startswith("47")  # sorted by latent id, descending
        page.locator("#latents a").first.click()
        page.wait_for_load_state("load")
        loaded = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        shot = tmp_path / "latent.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == []
    assert loaded and all(loaded)
    assert all(url.startswith("file://") for url in requests)  # nothing leaves the machine
    with Image.open(shot) as img:
        assert np.asarray(img.convert("L")).std() > 20

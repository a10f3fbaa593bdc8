"""`saev visuals` end to end: data files, dead latents, missing images, and the gallery in a real browser."""

import json
import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import saev.data
import saev.nn
from saev.cli import main
from saev.visuals import gallery as gallery_html
from saev.visuals.heatmap import SPOTLIGHT_FLOOR, spotlight
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


@pytest.mark.slow
def test_data_files_match_the_library_pass(gallery):
    tmp, store_dir, sae = gallery
    out = tmp / "out"
    saved = load_file(out / "topk.safetensors")
    top = top_activations(sae, saev.data.open_shards(store_dir), -2, 4, progress=False)
    assert torch.equal(saved["values"], top.values_SK) and torch.equal(saved["image_i"], top.image_i_SK)
    rendered = saved["patch_map_latents"].tolist()
    assert len(rendered) == 10 and 7 not in rendered
    assert torch.equal(saved["patch_maps"], top.patch_maps_SKP[rendered])
    assert torch.equal(saved["quantile_values"], top.sample_values_SM)
    assert torch.equal(saved["quantile_image_i"], top.sample_image_i_SM)
    assert torch.equal(saved["quantile_maps"], top.sample_maps_SMP[rendered])
    assert torch.equal(saved["image_hist"], top.stats.img_hist_SB)
    assert saved["related_latents"].tolist() == rendered
    latents = json.loads((out / "latents.json").read_text())["latents"]
    assert latents[7]["dead"] and latents[7]["top"] == [] and not latents[7]["rendered"]
    assert not (out / "latents" / "7.html").exists()
    for s in rendered:
        assert (out / "latents" / f"{s}.html").exists()
        ranks = range(sum(i >= 0 for i in top.image_i_SK[s].tolist()))
        slots = range(sum(i >= 0 for i in top.sample_image_i_SM[s].tolist()))
        # Each rank has its heatmap (<r>.jpg, also the index's card thumbnail) and its original crop,
        # each sampled image of the quantile strip its heatmap (q<slot>.jpg).
        assert sorted(p.name for p in (out / "thumbs" / str(s)).iterdir()) == sorted(
            [f"{r}.jpg" for r in ranks] + [f"{r}.orig.jpg" for r in ranks] + [f"q{j}.jpg" for j in slots]
        )
        for name in ("0.jpg", "0.orig.jpg"):
            with Image.open(out / "thumbs" / str(s) / name) as img:
                assert img.format == "JPEG" and img.size == (224, 224)
            assert (out / "thumbs" / str(s) / name).stat().st_size < 40_000


@pytest.mark.slow
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


def test_scatter_places_latents_on_log_log_axes():
    rows = [
        {"latent": 3, "freq": 1e-2, "mean": 1.0, "max": 2.0, "page": True, "note": "a <note>"},
        {"latent": 5, "freq": 10**-3.5, "mean": 10**0.25, "max": 9.0, "page": False, "note": ""},
    ]
    svg = ET.fromstring(gallery_html.scatter_svg(rows, x_range=(1e-4, 1.0), y_range=(0.1, 10.0)))
    (width, height), (left, top, right, bottom) = gallery_html.PLOT_SIZE, gallery_html.PLOT_MARGIN
    w, h = width - left - right, height - top - bottom
    points = {int(c.get("data-latent")): c for c in svg.iter("circle")}
    # x spans 10^-4 to 10^0 left to right, y spans 10^-1 to 10^1 bottom to top.
    assert float(points[3].get("cx")) == pytest.approx(left + w * 2 / 4, abs=0.06)
    assert float(points[3].get("cy")) == pytest.approx(top + h / 2, abs=0.06)
    assert float(points[5].get("cx")) == pytest.approx(left + w * 0.5 / 4, abs=0.06)
    assert float(points[5].get("cy")) == pytest.approx(top + h * (1 - 1.25 / 2), abs=0.06)
    links = {a.get("href"): [int(c.get("data-latent")) for c in a.iter("circle")] for a in svg.iter("a")}
    assert links == {"latents/3.html": [3]}  # only latents with pages link to them
    assert "a <note>" in "".join(points[3].itertext())
    xticks = [t.text for t in svg.iter("text") if t.get("class") == "xtick"]
    yticks = [t.text for t in svg.iter("text") if t.get("class") == "ytick"]
    assert xticks == ["10\u207b\u2074", "10\u207b\u00b3", "10\u207b\u00b2", "10\u207b\u00b9", "1"]
    assert yticks == ["0.1", "0.2", "0.5", "1", "2", "5", "10"]
    assert {t.get("class") for t in svg.iter("text")} >= {"xlabel", "ylabel"}


def test_scatter_default_axes_hold_every_point():
    rng = np.random.default_rng(0)
    rows = [
        {"latent": s, "freq": float(f), "mean": float(m), "max": 1.0, "page": s % 3 == 0, "note": ""}
        for s, (f, m) in enumerate(
            zip(10 ** rng.uniform(-6, -0.2, 50), 10 ** rng.uniform(-1, 1.5, 50), strict=True)
        )
    ]
    svg = ET.fromstring(gallery_html.scatter_svg(rows))
    (width, height), (left, top, right, bottom) = gallery_html.PLOT_SIZE, gallery_html.PLOT_MARGIN
    circles = list(svg.iter("circle"))
    assert len(circles) == 50
    for c in circles:
        assert left < float(c.get("cx")) < width - right and top < float(c.get("cy")) < height - bottom


def test_histogram_axes_and_colour_scale():
    edges = [10 ** (k / 10) for k in range(-20, 21)]
    counts = [0] * 40
    counts[12:30] = [5 * k for k in range(1, 19)]  # from 10**-0.8 to 10, 90 at most
    svg = ET.fromstring(gallery_html.histogram_svg(counts, edges))
    texts = {t.get("class"): [] for t in svg.iter("text")}
    for t in svg.iter("text"):
        texts[t.get("class")].append(t.text)
    assert texts["xtick"] == ["0.2", "0.5", "1", "2", "5", "10"] and texts["ytick"] == [
        "0",
        "20",
        "40",
        "60",
        "80",
        "100",
    ]
    assert texts["xlabel"] == ["activation (log scale)"] and texts["ylabel"] == ["count (tokens)"]
    assert len([r for r in svg.iter("rect") if r.find("title") is not None]) == 18
    scale = ET.fromstring(gallery_html.colour_scale_svg(8.0))
    assert [t.text for t in scale.iter("text")] == ["0", "2", "4", "6", "8"]


def test_spotlight_keeps_the_colours_where_the_latent_fires():
    crop = Image.new("RGB", (64, 64), (200, 40, 40))
    out = np.asarray(spotlight(crop, np.array([0.0, 3.0, 0.0, 0.0], dtype=np.float32), (2, 2)))
    assert tuple(out[16, 48]) == (200, 40, 40)  # inside the firing patch: untouched
    assert tuple(out[48, 16]) == tuple(round(SPOTLIGHT_FLOOR * c) for c in (200, 40, 40))  # dimmed
    assert tuple(out[0, 32]) == (255, 255, 255) or tuple(out[1, 32]) == (255, 255, 255)  # outlined
    assert tuple(out[32, 48]) in {(255, 255, 255), (20, 20, 20)}


def _std(path, box=None) -> float:
    with Image.open(path) as img:
        return float(np.asarray((img.crop(box) if box else img).convert("L")).std())


@pytest.mark.slow
@needs_chromium
def test_gallery_opens_from_file_urls_without_errors(gallery):
    from playwright.sync_api import sync_playwright

    out = gallery[0] / "out"
    latents = json.loads((out / "latents.json").read_text())["latents"]
    live = [lat for lat in latents if not lat["dead"]]
    rendered = [lat["latent"] for lat in latents if lat["rendered"]]
    shots = gallery[0] / "shots"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((out / "index.html").as_uri())

        # The plot: one point per live latent, the rendered ones linking to their pages.
        assert page.locator("#plot circle").count() == len(live)
        hrefs = page.eval_on_selector_all("#plot a", "as => as.map(a => a.getAttribute('href'))")
        assert sorted(hrefs) == sorted(f"latents/{s}.html" for s in rendered)
        assert all((out / h).exists() for h in hrefs)
        assert page.locator("#plot .xlabel").text_content().startswith("firing frequency")
        assert page.locator("#plot .xtick").count() >= 2 and page.locator("#plot .ytick").count() >= 2
        assert "10 of 48 latents have pages" in page.locator(".about").inner_text()
        assert "--latents" in page.locator(".about .cmd").inner_text()

        # Cards: rendered latents first, their thumbnails loaded.
        # Dense latents (this random SAE has many) are hidden from the cards until asked for, and marked.
        n_dense = sum(lat["dense"] for lat in live)
        assert 0 < n_dense < 47
        hidden = f"{47 - n_dense} of 48 latents ({n_dense} dense hidden)"
        assert page.locator("#count").inner_text() == hidden  # the dead latent is hidden too
        assert (
            page.locator("#cards .card").count() == 47 - n_dense
            and page.locator("#cards .badge").count() == 0
        )
        assert f"show dense ({n_dense})" in page.locator(".controls").inner_text()
        page.check("#showdense")
        assert page.locator("#count").inner_text() == "47 of 48 latents"
        dense_cards = page.eval_on_selector_all(
            "#cards .card",
            "cs => cs.filter(c => c.querySelector('.badge')).map(c => Number(c.dataset.latent))",
        )
        assert sorted(dense_cards) == sorted(lat["latent"] for lat in live if lat["dense"])
        cards = page.locator("#cards .card")
        assert cards.count() == 47
        order = [
            int(x) for x in page.eval_on_selector_all("#cards .card", "cs => cs.map(c => c.dataset.latent)")
        ]
        assert sorted(order[:10]) == sorted(rendered)
        assert page.locator("#cards .card .thumbs").count() == 10
        page.locator("#cards").scroll_into_view_if_needed()
        page.wait_for_function(
            "Array.from(document.querySelectorAll('#cards img')).every(i => i.complete && i.naturalWidth > 0)",
            timeout=10_000,
        )
        assert page.locator("#cards img").count() == 40  # four top images each
        page.screenshot(path=str(shots / "index-cards.png"))
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(shots / "index.png"))
        plot_box = page.locator("#plot").bounding_box()

        # Sorting and filtering change the cards.
        page.uncheck("#first")
        page.select_option("#sort", "latent")  # ascending by id
        ids = [
            int(x) for x in page.eval_on_selector_all("#cards .card", "cs => cs.map(c => c.dataset.latent)")
        ]
        assert ids == sorted(lat["latent"] for lat in live)
        page.click("#dir")
        ids = [
            int(x) for x in page.eval_on_selector_all("#cards .card", "cs => cs.map(c => c.dataset.latent)")
        ]
        assert ids == sorted((lat["latent"] for lat in live), reverse=True)
        page.select_option("#sort", "max")
        maxes = page.eval_on_selector_all("#cards .card", "cs => cs.map(c => Number(c.dataset.latent))")
        assert maxes == [lat["latent"] for lat in sorted(live, key=lambda lat: (-lat["max"], lat["latent"]))]
        page.check("#rendered")
        assert cards.count() == 10 and page.locator("#count").inner_text() == "10 of 48 latents"
        page.uncheck("#rendered")
        page.fill("#lo", "0.5")  # no latent fires on more than 10**0.5 of tokens
        assert page.locator("#count").inner_text().startswith("0 of") and cards.count() == 0
        assert page.locator("#plot circle.off").count() == len(live)  # filtered-out points fade
        page.fill("#lo", "")
        page.fill("#q", "4")
        expected = sorted(lat["latent"] for lat in live if str(lat["latent"]).startswith("4"))
        assert (
            sorted(
                int(x)
                for x in page.eval_on_selector_all("#cards .card", "cs => cs.map(c => c.dataset.latent)")
            )
            == expected
        )
        page.fill("#q", "")
        page.check("#dead")
        assert (
            "48 of 48" in page.locator("#count").inner_text()
            and page.locator("#cards .card.dead").count() == 1
        )

        # The table view is still there.
        page.check("input[name=view][value=table]")
        assert page.locator("#cards").is_hidden() and "(dead)" in page.locator("#latents").inner_text()
        page.locator("#latents th[data-key=latent]").click()
        assert page.locator("#latents tbody tr td").first.inner_text().startswith("47")  # descending
        page.locator("#latents th[data-key=latent]").click()
        assert page.locator("#latents tbody tr td").first.inner_text() == "0"

        # A point of the plot opens its latent's page.
        page.check("input[name=view][value=cards]")
        page.evaluate("window.scrollTo(0, 0)")
        target = page.locator("#plot a").last  # drawn last, so on top of any point it overlaps
        href = target.get_attribute("href")
        target.locator("circle").click(force=True)
        page.wait_for_load_state("load")
        assert page.url.endswith(href)
        s = int(href.split("/")[1].split(".")[0])
        n_images = len(latents[s]["top"])
        pairs = page.locator(".pair")
        assert page.locator(".grid figure").count() == n_images
        assert pairs.count() + page.locator(".single").count() == n_images and pairs.count() >= 1
        assert page.locator(".pair img").count() == 2 * pairs.count()
        srcs = page.eval_on_selector_all(
            ".pair", "ps => ps.map(p => Array.from(p.querySelectorAll('img'), i => i.getAttribute('src')))"
        )
        assert all(a.endswith(".orig.jpg") and not b.endswith(".orig.jpg") for a, b in srcs)
        loaded = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        vmax = float(load_file(out / "topk.safetensors")["patch_maps"][rendered.index(s)].max())
        scale = page.locator("svg.scale text").all_text_contents()
        assert scale[0] == "0" and scale[-1] == f"{vmax:.3g}"
        assert page.locator("svg.hist .xlabel").text_content() == "activation (log scale)"
        assert page.locator("svg.hist .ylabel").text_content() == "count (tokens)"
        assert page.locator("svg.hist .xtick").count() >= 2 and page.locator("svg.hist .ytick").count() >= 2
        captions = page.locator(".grid figcaption").all_inner_texts()
        assert all("/" not in c and c.startswith("#") and "max " in c for c in captions)  # no raw paths
        titles = page.eval_on_selector_all(".grid figcaption .name", "ns => ns.map(n => n.title)")
        assert [t for t in titles] == [img["source"] for img in latents[s]["top"]]
        wraps = page.evaluate(
            "Array.from(document.querySelectorAll('.grid figcaption .name'), n => n.getClientRects().length)"
        )
        assert set(wraps) == {1}  # one line each, never broken mid-word
        page.screenshot(path=str(shots / "latent.png"), full_page=True)
        browser.close()
    assert errors == []
    assert loaded and all(loaded)
    assert all(url.startswith("file://") for url in requests)  # nothing leaves the machine
    assert _std(shots / "index.png") > 20 and _std(shots / "latent.png") > 20
    assert _std(shots / "index-cards.png") > 20
    box = (
        plot_box["x"],
        plot_box["y"],
        plot_box["x"] + plot_box["width"],
        plot_box["y"] + plot_box["height"],
    )
    assert _std(shots / "index.png", box) > 10  # the plot area is not blank


def test_latent_page_captions_and_pages_without_heatmaps(tmp_path):
    def image(rank, source, heatmap):
        return gallery_html.TopImage(
            rank, rank, 3.21, f"thumbs/1/{rank}.orig.jpg", heatmap, (224, 149), source, "cat", False
        )

    page = gallery_html.LatentPage(
        1, "", 0.1, 1.0, 3.21, 100, [0, 4, 2], [0.5, 1.0, 2.0, 4.0],
        [image(0, "/data/some dir/a_rather_long_file_name.png", None), image(1, "index 5", None)],
    )  # fmt: skip
    gallery_html.write_latent_page(tmp_path, page, None, None, "cls")
    text = (tmp_path / "latents" / "1.html").read_text()
    shown = re.sub(r"<[^>]+>", " ", text)  # what the page prints, without its tags' attributes
    assert "a_rather_long_file_name.png" in shown and "/data/some dir" not in shown
    assert 'href="file:///data/some%20dir/a_rather_long_file_name.png"' in text
    assert 'title="/data/some dir/a_rather_long_file_name.png"' in text
    assert "[CLS] 3.21" in shown and "cat" in shown
    # Ranked by [CLS], there is no per-patch map: one picture per image and no heatmap scale.
    assert text.count('class="single"') == 2 and 'class="pair"' not in text and 'class="scale"' not in text

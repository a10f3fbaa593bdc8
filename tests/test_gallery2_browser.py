"""Gallery II in a real browser: a latent page's name, related latents and quantile strip, and the
index's names, search and dense latents."""

import json

import pytest

from tests.conftest import launch_chromium, needs_chromium
from tests.test_gallery2_additive import first_gallery, recorded  # noqa: F401 (a fixture)
from tests.test_visuals_gallery import _std


@pytest.mark.slow
@needs_chromium
def test_latent_page_shows_its_name_relations_and_quantile_strip(recorded, tmp_path):  # noqa: F811
    from playwright.sync_api import sync_playwright

    out = tmp_path / "gallery"
    first_gallery(recorded, out)
    data = json.loads((out / "latents.json").read_text())
    row = data["latents"][3]
    shots = tmp_path / "shots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((out / "latents" / "3.html").as_uri())

        assert page.locator(".latname").inner_text() == (
            "shape:circle \u2014 F1 0.84 (precision 0.80, recall 0.88) on held-out images, patch by patch, "
            "from the concept labels"
        )
        # Related latents: five each, in latents.json's order, linked when they have pages.
        tables = page.locator(".related table")
        neighbours = tables.nth(0).locator("tr td:first-child").all_inner_texts()
        assert neighbours == [f"latent {n['latent']}" for n in row["neighbours"]] and len(neighbours) == 5
        links = page.eval_on_selector_all(".related a", "as => as.map(a => a.getAttribute('href'))")
        listed = [r["latent"] for r in row["neighbours"] + row["cooccur"]]
        assert links == [f"{s}.html" for s in listed if s in (5, 9)]  # the other rendered latents
        cooccur = tables.nth(1).locator("tr td.num").all_inner_texts()
        assert cooccur == [f"{c['p']:.0%}" for c in row["cooccur"]]
        assert f"over {data['cooccur_tokens']:,} patch tokens" in page.locator(".related").inner_text()

        # The strip: the sampled images by ascending value, each with its percentile and value.
        strip = page.locator(".strip figure")
        assert strip.count() == len(row["quantiles"]) == 9
        captions = strip.locator("figcaption").all_inner_texts()
        values = [q["value"] for q in row["quantiles"]]
        assert values == sorted(values)
        for caption, q in zip(captions, row["quantiles"], strict=True):
            assert caption.startswith(f"p{q['percentile']:.0f}\n") and f"max {q['value']:.3g}" in caption
        percentiles = [q["percentile"] for q in row["quantiles"]]
        assert percentiles == sorted(percentiles) and 0 <= percentiles[0] and percentiles[-1] <= 100
        legend = page.locator(".strip + .legend").inner_text()
        assert legend.startswith("9 of the ") and "Deciles: p10 " in legend and "p90 " in legend
        page.wait_for_function(
            "Array.from(document.querySelectorAll('.strip img')).every(i => i.complete && i.naturalWidth > 0)",
            timeout=10_000,
        )
        page.locator("h2", has_text="Quantile strip").scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "latent.png"), full_page=True)
        strip_box = page.locator(".strip").bounding_box()

        # The index: names before notes, unexplained in grey, searchable by name.
        page.goto((out / "index.html").as_uri())
        assert [data["latents"][s]["dense"] for s in (3, 5, 9)] == [True, True, False]  # this random SAE's
        assert page.locator("#cards .card[data-latent='3']").count() == 0  # dense: hidden until asked for
        assert page.locator("#cards .card[data-latent='9'] .badge").count() == 0
        page.check("#showdense")
        card = page.locator("#cards .card[data-latent='3']")
        assert card.locator(".badge").inner_text() == "dense"
        assert card.locator(".name").inner_text() == "shape:circle F1 0.84"
        grey = page.locator("#cards .card[data-latent='5'] .name")
        assert grey.inner_text() == "unexplained"
        assert grey.evaluate("e => getComputedStyle(e).color") == "rgb(153, 153, 153)"
        assert page.locator("#cards .card[data-latent='9'] .name").count() == 0  # never scored
        page.fill("#q", "circle")
        ids = page.eval_on_selector_all("#cards .card", "cs => cs.map(c => Number(c.dataset.latent))")
        assert ids == [3]
        page.fill("#q", "unexpl")
        assert page.eval_on_selector_all("#cards .card", "cs => cs.map(c => Number(c.dataset.latent))") == [5]
        page.fill("#q", "")
        page.screenshot(path=str(shots / "index.png"))
        browser.close()
    assert errors == []
    assert all(url.startswith("file://") for url in requests)
    box = (
        strip_box["x"],
        strip_box["y"],
        strip_box["x"] + strip_box["width"],
        strip_box["y"] + strip_box["height"],
    )
    assert strip_box["width"] > 500 and _std(shots / "latent.png", box) > 20  # the strip shows pictures

"""`saev serve`: the JSON API, its refusals, request coalescing, and the page in a real browser, on
the output of a reduced quickstart."""

import asyncio
import io
import json
import os
import pathlib
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from saev import synthetic
from saev.cli import main
from saev.commands import serve
from saev.explorer.app import Coalescer
from tests.conftest import import_or_skip, launch_chromium, needs_chromium

fastapi = import_or_skip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

SQUARE = synthetic.CONCEPTS.index("shape:square")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A reduced quickstart (the built-in ViT on generated images) and its `saev serve` config."""
    out = tmp_path_factory.mktemp("explorer") / "qs"
    main(["quickstart", "--out", str(out), "--n-images", "600", "--n-train", "600000", "--n-latents", "16"])
    report = json.loads((out / "report.json").read_text())
    square_latent = report["concepts"][SQUARE]["latent"]["unit"]
    cfg = serve.Config(sae=report["sae"], visuals=out / "gallery", head="builtin-patch", dense_freq=0.25)
    return out, report, square_latent, cfg


@pytest.fixture(scope="module")
def client(run):
    app, _ = serve.build(run[3])
    return TestClient(app, base_url="http://127.0.0.1:8000")  # the Host the server answers


def square_image(out: pathlib.Path) -> tuple[str, list[int]]:
    """A held-out image with one square and another object that is not a square, and the square's
    patches (those the ground truth labels square)."""
    dataset = synthetic.load(out / "images")
    for record in reversed(dataset.records):
        shapes = [obj.shape for obj in record.objects]
        if shapes.count("square") == 1 and len(shapes) >= 2:
            patches = synthetic.patch_rows(record, (8, 8))[:, SQUARE]
            if patches.sum() >= 4:
                return f"s{record.index}", np.nonzero(patches)[0].tolist()
    raise AssertionError("no image with one square among the generated ones")


@pytest.mark.slow
def test_the_api_lists_the_squares_latent_and_suppressing_it_removes_the_squares(run, client):
    out, report, square_latent, _ = run
    info = client.get("/api/info").json()
    assert info["grid"] == [8, 8] and info["head"]["kind"] == "patch" and info["n_images"] == 600
    image, patches = square_image(out)
    listed = client.post("/api/latents", json={"image": image, "patches": patches}).json()["latents"]
    assert square_latent in [row["latent"] for row in listed]
    row = next(r for r in listed if r["latent"] == square_latent)
    assert "best detector of shape:square" in row["note"] and len(row["codes"]) == 64 and row["page"]
    pred = client.post(
        "/api/predict", json={"image": image, "edits": [{"latent": square_latent, "value": -1, "op": "set"}]}
    ).json()
    before = [set(c) for c in pred["before"]["classes"]]
    after = [set(c) for c in pred["after"]["classes"]]
    assert any(SQUARE in b for b in before) and not any(SQUARE in a for a in after)
    others = [p for p, b in enumerate(before) if b and SQUARE not in b]
    assert others and all(before[p] == after[p] for p in others)  # the other object is untouched
    assert set(pred["changed"]) == {p for p in range(64) if before[p] != after[p]}
    # No edit: the prediction equals the clean one.
    same = client.post("/api/predict", json={"image": image, "edits": []}).json()
    assert same["before"] == same["after"] and same["changed"] == []
    # Dense latents (firing on over 25% of tokens here) are listed only when asked for.
    dense = client.post("/api/latents", json={"image": image, "include_dense": True, "top": 200}).json()[
        "latents"
    ]
    sparse = client.post("/api/latents", json={"image": image, "top": 200}).json()["latents"]
    assert all(r["freq"] <= 0.25 for r in sparse) and any(r["freq"] > 0.25 for r in dense)


@pytest.mark.slow
def test_images_thumbnails_crops_uploads_and_the_openapi_schema(run, client):
    page = client.get("/api/images", params={"offset": 590, "limit": 50}).json()
    assert page["total"] == 600 and [im["id"] for im in page["images"]] == [f"s{i}" for i in range(590, 600)]
    crop = Image.open(io.BytesIO(client.get("/api/images/s3/crop.png").content))
    assert crop.size == (128, 128)
    assert client.get("/api/images/s3/thumb.png").headers["content-type"] == "image/jpeg"
    buf = io.BytesIO()
    Image.open(run[0] / "images" / "images" / "000007.png").save(buf, "PNG")
    uploaded = client.post("/api/upload", content=buf.getvalue()).json()["id"]
    assert uploaded.startswith("u")
    assert len(client.post("/api/latents", json={"image": uploaded}).json()["latents"]) > 0
    schema = client.get("/api/openapi.json").json()
    assert {"/api/info", "/api/images", "/api/latents", "/api/predict", "/api/upload"} <= set(schema["paths"])
    assert "text/html" in client.get("/").headers["content-type"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,path,body,status,message",
    [
        ("get", "/visuals/../report.json", None, 404, "Not Found"),
        ("get", "/visuals/..%2f..%2freport.json", None, 404, "Not Found"),
        ("get", "/static/..%2f..%2f__init__.py", None, 404, "Not Found"),
        ("get", "/api/images/..%2f..%2fetc%2fpasswd/crop.png", None, 404, "Not Found"),
        ("get", "/api/images/..%5c..%5cetc%5cpasswd/crop.png", None, 404, "no image"),
        ("get", "/api/images/s99999/crop.png", None, 404, "no image"),
        ("post", "/api/predict", b"{not json", 422, "invalid request"),
        (
            "post",
            "/api/predict",
            {"image": "s1", "edits": [{"latent": 99999, "value": -1}]},
            400,
            "out of range",
        ),
        ("post", "/api/predict", {"image": "s1", "edits": [{"latent": -3, "value": -1}]}, 422, "latent"),
        (
            "post",
            "/api/predict",
            {"image": "s1", "edits": [{"latent": 3, "value": 1e9}]},
            400,
            "outside -1000..1000",
        ),
        ("post", "/api/predict", {"image": "s1", "patches": [64]}, 400, "patches [64] out of range"),
        ("post", "/api/latents", {"image": "s1", "patches": [-1]}, 400, "out of range"),
        ("post", "/api/latents", {"image": "s1", "top": 0}, 422, "top"),
        ("post", "/api/latents", {"patches": [1]}, 422, "image"),
        ("get", "/api/images?limit=100000", None, 422, "limit"),
        ("post", "/api/upload", b"", 400, "empty upload"),
        ("post", "/api/upload", b"GIF89a not really", 400, "not an image"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message_and_the_server_keeps_serving(
    client, method, path, body, status, message
):
    kwargs = {"json": body} if isinstance(body, dict) else {"content": body} if body is not None else {}
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert client.get("/api/info").status_code == 200


@pytest.mark.slow
def test_uploads_are_capped_in_bytes_and_pixels(client):
    too_big = client.post("/api/upload", content=b"\0" * (10 * 2**20 + 1))
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]
    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, "PNG")  # 81 Mpx in about 80 kB: a decompression bomb
    bomb = client.post("/api/upload", content=buf.getvalue())
    assert bomb.status_code == 400 and "pixel" in bomb.json()["error"]
    assert client.get("/api/info").status_code == 200


def test_a_newer_request_replaces_the_waiting_one():
    """Dragging a slider: while one computation runs, only the newest waiting request survives."""
    calls = []

    async def scenario():
        coalescer = Coalescer()

        def work(tag):
            def fn():
                time.sleep(0.1)
                calls.append(tag)
                return tag

            return fn

        first = asyncio.create_task(coalescer.run("c", work(1)))
        await asyncio.sleep(0.02)
        waiting = [asyncio.create_task(coalescer.run("c", work(t))) for t in (2, 3, 4)]
        other = asyncio.create_task(coalescer.run("d", work(9)))
        return await first, await asyncio.gather(*waiting), await other

    first, waiting, other = asyncio.run(scenario())
    assert first == 1 and waiting == [None, None, 4] and other == 9
    assert sorted(calls) == [1, 4, 9]


@pytest.mark.slow
def test_the_server_binds_loopback_unless_told(monkeypatch, run, caplog):
    calls = {}

    def serve_on(server, sockets):
        calls["address"] = sockets[0].getsockname()[:2]
        sockets[0].close()

    monkeypatch.setattr("uvicorn.Server.run", serve_on)
    port = free_port()
    main(["serve", "--sae", run[1]["sae"], "--visuals", str(run[0] / "gallery"), "--port", str(port)])
    assert calls == {"address": ("127.0.0.1", port)}
    port = free_port()
    args = ["--host", "0.0.0.0", "--port", str(port)]
    main(["serve", "--sae", run[1]["sae"], "--visuals", str(run[0] / "gallery"), *args])
    assert calls == {"address": ("0.0.0.0", port)}
    assert "anyone who can reach this machine" in caplog.text


@pytest.mark.slow
def test_quickstart_prints_the_serve_command(run, capsys):
    out, report, _, _ = run
    main(["quickstart", "--out", str(out), "--n-images", "600", "--n-train", "600000", "--n-latents", "16"])
    lines = capsys.readouterr().out.strip().splitlines()
    explore = next(line for line in lines if line.startswith("explore: "))
    assert (
        explore
        == f"explore: saev serve --sae {report['sae']} --visuals {out / 'gallery'} --head builtin-patch --dense-freq 0.25"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run):
    app, _ = serve.build(run[3])
    yield from serving(app)


def serving(app) -> Iterator[str]:
    """The explorer app `app` served on a free local port in a thread; yields its address."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(5)


@pytest.mark.slow
@needs_chromium
def test_the_page_in_a_real_browser(run, server, tmp_path):
    from playwright.sync_api import sync_playwright

    out, _, square_latent, _ = run
    image, patches = square_image(out)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(server + "/")
        page.wait_for_selector("body[data-ready='1']")
        page.click("#thumbs img[data-id='s3']")  # picking from the list works
        page.wait_for_selector("#before .cell")
        assert page.locator("#image-name").inner_text() == "000003.png"
        page.goto(
            f"{server}/?image={image}"
        )  # the held-out image with a square, beyond the first page of the list
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_selector("#before .cell")
        squares_before = page.locator("#before .cell[data-classes*='shape:square']").count()
        assert squares_before > 0
        for p_ in patches:  # click the square's patches
            page.locator(f"#grid .patch[data-patch='{p_}']").click()
        card = page.locator(f"#latents .latent[data-latent='{square_latent}']")
        card.wait_for()
        seq = page.evaluate("document.body.dataset.predictions")
        card.locator("button.suppress").click()
        page.wait_for_function(f"document.body.dataset.predictions !== '{seq}'")
        assert page.locator("#after .cell[data-classes*='shape:square']").count() == 0
        before = page.eval_on_selector_all("#before .cell", "cells => cells.map(c => c.dataset.classes)")
        after = page.eval_on_selector_all("#after .cell", "cells => cells.map(c => c.dataset.classes)")
        others = [i for i, b in enumerate(before) if b and "shape:square" not in b]
        assert others and all(before[i] == after[i] for i in others)
        url = page.url
        name = f"{int(image.removeprefix('s')):06d}.png"  # the URL names the image by its file
        assert f"image={name}" in url and f"edits={square_latent}%3A-1" in url.replace(":", "%3A")
        shot = pathlib.Path(os.environ.get("SAEV_EXPLORER_SCREENSHOT", tmp_path / "explorer.png"))
        page.select_option("#class-filter", "shape:square")  # colour only the patches predicted square
        assert page.locator("#after .legend").inner_text() == "shape:square"
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(shot))
        # Reloading the URL brings the same state back.
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_selector("#after .cell")
        page.wait_for_selector(f"#latents .latent.edited[data-latent='{square_latent}']")
        assert page.locator("#grid .patch.selected").count() == len(patches)
        assert page.locator("#after .cell[data-classes*='shape:square']").count() == 0
        assert page.locator("#before .cell[data-classes*='shape:square']").count() == squares_before
        browser.close()
    assert errors == []
    assert all(u.startswith(server) for u in requests)  # nothing leaves localhost

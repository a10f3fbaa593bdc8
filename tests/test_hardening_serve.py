"""`saev serve` and the image paths of a store, hardened: the host is checked before the server
starts, image ids are parsed strictly, request bodies are capped before they are read, requests
addressed to another host are refused (DNS rebinding), clients that go away are not errors, and a
store's images.json cannot make `saev visuals` or `saev serve` read a file outside its image root.
Odd JSON gets a 4xx with a message, never a 500."""

import asyncio
import io
import json
import logging
import pathlib
import shutil
import socket
import sys

import numpy as np
import pytest
from PIL import Image

import saev.errors
from saev.cli import main
from saev.commands import serve
from saev.explorer import server
from tests.conftest import import_or_skip
from tests.test_hardening_cli import run_cli

fastapi = import_or_skip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from saev.explorer.app import JSON_LIMIT, create_app  # noqa: E402

HOST = "127.0.0.1:8000"
CHUNK = 64 * 2**10


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> tuple[pathlib.Path, str]:
    """The smallest quickstart: 100 generated images, the built-in ViT, an SAE and its gallery."""
    out = tmp_path_factory.mktemp("serve") / "qs"
    main(
        [
            "quickstart",
            "--out",
            str(out),
            "--n-images",
            "100",
            "--n-train",
            "50000",
            "--n-latents",
            "2",
            "--batch-size",
            "512",
        ]
    )
    return out, json.loads((out / "report.json").read_text())["sae"]


def config(quickstart, **changes) -> serve.Config:
    out, sae = quickstart
    return serve.Config(sae=sae, visuals=out / "gallery", head="builtin-patch", dense_freq=0.25, **changes)


@pytest.fixture(scope="module")
def built(quickstart):
    return serve.build(config(quickstart))


@pytest.fixture(scope="module")
def client(built):
    return TestClient(built[0], base_url=f"http://{HOST}", raise_server_exceptions=False)


def call(app, method: str, path: str, headers=(), chunks=(), *, host: str | None = HOST, disconnect=False):
    """One request through the ASGI app as uvicorn runs it: the body arrives in `chunks` (an
    iterator, so a test can tell how much the app read), then either its end or, with `disconnect`,
    the client going away. Returns the status (None if no answer started), the answer's JSON, and
    how many chunks the app read. Like uvicorn, an exception escaping the app is logged with its
    traceback."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": ([(b"host", host.encode())] if host is not None else []) + list(headers),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    chunks = iter(chunks)
    read, ended = 0, False
    answer: dict = {"status": None, "body": b""}

    async def receive() -> dict:
        nonlocal read, ended
        chunk = next(chunks, None)
        if chunk is not None:
            read += 1
            return {"type": "http.request", "body": chunk, "more_body": True}
        if disconnect or ended:  # asked again after the end: the app waits for a disconnect
            return {"type": "http.disconnect"}
        ended = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    async def server() -> None:
        try:
            await app(scope, receive, send)
        except Exception:
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application\n")

    asyncio.run(server())
    body = json.loads(answer["body"]) if answer["body"] else None
    return answer["status"], body, read


def no_errors_logged(caplog) -> bool:
    return not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# 1. The host is checked before anything starts.


@pytest.mark.slow
@pytest.mark.parametrize(
    "host,message",
    [
        ("not..a..host", "not an IP address or a host name"),
        ("-bad-.example", "not an IP address or a host name"),
        ("two words", "not an IP address or a host name"),
        ("a" * 300, "not an IP address or a host name"),
        ("", "not an IP address or a host name"),
        ("[::1]", "without brackets"),
        ("no-such-host.invalid", "cannot resolve this name"),
    ],
)
def test_a_bad_or_unresolvable_host_is_a_one_line_error(quickstart, host, message, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)  # offline or not, the name does not resolve
    monkeypatch.setattr("uvicorn.Server.run", lambda *a, **k: pytest.fail("the server started"))
    out, sae = quickstart
    err = run_cli(["serve", "--sae", sae, "--visuals", str(out / "gallery"), f"--host={host}"], capsys)
    assert "saev: error: --host " in err and message in err


def test_addresses_and_localhost_are_taken_without_resolving_them(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("resolved an address"))
    for host in ("localhost", "127.0.0.1", "0.0.0.0", "::1", "::", "192.168.1.5", "fe80::1%eth0"):
        server.check_host(host, 8000)
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, 1, 6, "", ("10.0.0.2", 8000))]
    )
    server.check_host("explorer.lan", 8000)  # a name that resolves


# 2. Image ids.


@pytest.mark.slow
@pytest.mark.parametrize(
    "image_id,status",
    [
        ("s²", 404),  # a digit to str.isdigit, not to int: a 500 before
        ("s٣", 404),  # an Arabic-Indic 3: image 3 under another id before
        ("s03", 404),  # one id per image
        ("s-1", 404),
        ("s1.0", 404),
        ("s" + "9" * 30, 404),
        ("s" + "9" * 5000, 422),  # int() refuses over 4300 digits: a 500 before
        ("u" + "0" * 16, 404),
    ],
)
def test_image_ids_are_parsed_strictly(client, image_id, status):
    for response in (
        client.get(f"/api/images/{image_id}/crop.png"),
        client.get(f"/api/images/{image_id}/thumb.png"),
        client.get(f"/api/latents/{image_id}/1"),
        client.post("/api/latents", json={"image": image_id}),
        client.post("/api/predict", json={"image": image_id, "edits": []}),
    ):
        assert response.status_code == status, response.text
        assert ("no image" if status == 404 else "at most 32 characters") in response.json()["error"]
    assert client.get("/api/images/s3/crop.png").status_code == 200


# 3. Request bodies are capped before they are read.


@pytest.mark.slow
def test_a_declared_body_over_the_limit_is_refused_unread(built):
    app = built[0]
    for path, limit in (("/api/latents", JSON_LIMIT), ("/api/upload", 10 * 2**20)):
        for declared in (str(limit + 1), str(10**20), "9" * 5000):
            headers = [(b"content-length", declared.encode()), (b"content-type", b"application/json")]
            body_chunks = (b" " * CHUNK for _ in range(limit // CHUNK + 2))  # what it declares
            status, body, read = call(app, "POST", path, headers, body_chunks)
            assert (status, read) == (413, 0) and f"{limit:,}-byte limit" in body["error"]


@pytest.mark.slow
def test_a_chunked_body_is_counted_as_it_arrives(built):
    app = built[0]
    json_header = [(b"content-type", b"application/json")]
    status, body, read = call(app, "POST", "/api/predict", json_header, (b" " * CHUNK for _ in range(64)))
    assert status == 413 and read == JSON_LIMIT // CHUNK + 1 and "limit" in body["error"]
    endless = (b"\0" * CHUNK for _ in iter(int, 1))
    status, body, read = call(app, "POST", "/api/upload", (), endless)
    assert status == 413 and read == 10 * 2**20 // CHUNK + 1
    # Under the limits, bodies are read whole.
    status, body, _ = call(app, "POST", "/api/latents", json_header, [b'{"image": ', b'"s1", "top": 3}'])
    assert status == 200 and len(body["latents"]) <= 3


@pytest.mark.slow
def test_a_json_body_over_a_megabyte_gets_413_and_the_server_keeps_serving(client):
    padded = b'{"image": "s1"' + b" " * JSON_LIMIT + b"}"
    response = client.post("/api/latents", content=padded, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "1,048,576-byte limit" in response.json()["error"]
    assert client.get("/api/info").status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("declared", [b"abc", b"-1", b"1e3", b"0x10", "١٢".encode(), b""])
def test_a_malformed_content_length_is_refused(built, declared):
    status, body, read = call(built[0], "POST", "/api/latents", [(b"content-length", declared)], [b"{}"])
    assert (status, read) == (400, 0) and "Content-Length" in body["error"]


# 4. DNS rebinding: requests addressed to another host are refused.

NAME = socket.gethostname()


@pytest.mark.slow
@pytest.mark.parametrize(
    "bind,host,answered",
    [
        ("127.0.0.1", "127.0.0.1:8000", True),
        ("127.0.0.1", "localhost:8000", True),
        ("127.0.0.1", "LocalHost.", True),
        ("127.0.0.1", "[::1]:8000", True),
        ("127.0.0.1", "evil.example:8000", False),  # a page at evil.example re-pointed at 127.0.0.1
        ("127.0.0.1", "127.0.0.1.evil.example", False),
        ("127.0.0.1", "192.168.1.5:8000", False),
        ("127.0.0.1", "[::1", False),
        ("127.0.0.1", "", False),
        ("127.0.0.1", None, False),
        ("::1", "[::1]:8000", True),
        ("localhost", "localhost:8000", True),
        ("192.168.1.5", "192.168.1.5:8000", True),
        ("192.168.1.5", "127.0.0.1:8000", True),
        ("192.168.1.5", "10.0.0.1:8000", False),
        ("explorer.lan", "Explorer.LAN:8000", True),
        ("explorer.lan", "evil.example:8000", False),
        ("0.0.0.0", "192.168.1.5:8000", True),  # every interface: any address
        ("0.0.0.0", "[fe80::1]:8000", True),
        ("0.0.0.0", f"{NAME}:8000", True),
        ("0.0.0.0", "evil.example:8000", False),  # but names only when known
        ("::", "10.0.0.1", True),
    ],
)
def test_requests_addressed_to_another_host_are_refused(built, quickstart, bind, host, answered):
    app = create_app(built[1], quickstart[0] / "gallery", bind)
    status, body, _ = call(app, "GET", "/api/info", host=host)
    if answered:
        assert status == 200, body
    else:
        assert (
            status == 421 and "not this explorer's address" in body["error"] and "localhost" in body["error"]
        )


@pytest.mark.slow
def test_the_default_test_client_host_is_refused(built):
    assert TestClient(built[0]).get("/api/info").status_code == 421  # Host: testserver


# 5. Clients that go away are not the server's errors.


@pytest.mark.slow
@pytest.mark.parametrize(
    "path,headers,chunks",
    [
        ("/api/upload", [(b"content-length", b"100000")], [b"\x89PNG" + b"\0" * 996]),
        ("/api/upload", [], [b"\0" * 1000]),  # chunked
        ("/api/latents", [(b"content-type", b"application/json")], [b'{"image": ']),
    ],
)
def test_a_client_going_away_mid_request_logs_no_error(built, caplog, path, headers, chunks):
    caplog.set_level(logging.DEBUG)
    status, _, read = call(built[0], "POST", path, headers, chunks, disconnect=True)
    assert read == 1 and no_errors_logged(caplog), caplog.text
    assert status != 500


# 6. Image paths from a store stay inside its image root.

RED = (255, 0, 0)


@pytest.fixture
def tampered(quickstart, tmp_path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """A copy of the quickstart's store whose images.json points outside its image root, every
    way: `../`, an absolute path, a `..` after a folder. Returns the store, the root and the
    outside file (solid red, so that a drawing of it shows)."""
    out, _ = quickstart
    store = tmp_path / "store"
    shutil.copytree(next((out / "shards").iterdir()), store)
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (128, 128), RED).save(secret)
    shutil.copy(out / "images" / "images" / "000002.png", root / "000002.png")
    images = json.loads((store / "images.json").read_text())
    escapes = ["../secret.png", str(secret), "sub/../../secret.png"]
    for i, record in enumerate(images["images"]):
        record["path"] = escapes[i % 3] if i != 2 else "000002.png"
    images["source"]["root"] = str(root)
    (store / "images.json").write_text(json.dumps(images))
    return store, root, secret


@pytest.mark.slow
def test_serve_answers_404_for_an_image_outside_the_root(quickstart, tampered, caplog):
    store, root, secret = tampered
    app, _ = serve.build(config(quickstart, shards=store))
    client = TestClient(app, base_url=f"http://{HOST}", raise_server_exceptions=False)
    for image_id in ("s0", "s1", "s3", "s0"):
        for what in ("crop.png", "thumb.png"):
            response = client.get(f"/api/images/{image_id}/{what}")
            assert response.status_code == 404 and "missing or cannot be read" in response.json()["error"]
    assert client.get("/api/images/s2/crop.png").status_code == 200  # inside the root
    warnings = [r.getMessage() for r in caplog.records if "images.json record 0:" in r.getMessage()]
    assert len(warnings) == 1 and str(root) in warnings[0] and "../secret.png" in warnings[0]


@pytest.mark.slow
@pytest.mark.parametrize("override", [False, True])
def test_visuals_draws_a_placeholder_for_an_image_outside_the_root(
    quickstart, tampered, tmp_path, caplog, override
):
    _, sae = quickstart
    store, root, secret = tampered
    if override:  # --images ROOT replaces the recorded root; the records are read against it
        images = json.loads((store / "images.json").read_text())
        images["source"]["root"] = str(tmp_path / "elsewhere")
        (store / "images.json").write_text(json.dumps(images))
    out = tmp_path / "visuals"
    args = [
        "visuals",
        "--sae",
        sae,
        "--shards",
        str(store),
        "--out",
        str(out),
        "--top-k",
        "8",
        "--n-latents",
        "2",
    ]
    main(args + (["--images", str(root)] if override else []))
    latents = json.loads((out / "latents.json").read_text())["latents"]
    drawn = {t["image_i"] for row in latents if row["rendered"] for t in row["top"]}
    assert drawn - {2}, "some image outside the root should be among the top images"
    for thumb in out.glob("thumbs/*/*.jpg"):
        pixels = np.asarray(Image.open(thumb).convert("RGB")).reshape(-1, 3).mean(0)
        assert not (pixels[0] > 150 and pixels[1] < 100), f"{thumb} shows the file outside the root"
    pages = "".join(p.read_text() for p in (out / "latents").glob("*.html"))
    assert secret.as_uri() not in pages and 'href="file:' not in pages.replace(root.as_uri(), "")
    for i in drawn - {2}:
        warned = [r for r in caplog.records if f"images.json record {i}:" in r.getMessage()]
        assert len(warned) == 1 and str(root.resolve()) in warned[0].getMessage()


# 7. A source folder given by the user must exist.


@pytest.mark.slow
def test_visuals_and_serve_refuse_a_missing_images_folder(quickstart, tmp_path, capsys):
    out, sae = quickstart
    store = next((out / "shards").iterdir())
    missing = tmp_path / "nonexistent"
    visuals = ["visuals", "--sae", sae, "--shards", str(store), "--out", str(tmp_path / "v")]
    err = run_cli([*visuals, "--images", str(missing)], capsys)
    assert f"saev: error: --images {missing}: no such folder." in err
    a_file = out / "report.json"
    err = run_cli([*visuals, "--images", str(a_file)], capsys)
    assert f"--images {a_file}: is a file, not a folder." in err
    assert not (tmp_path / "v" / "index.html").exists()
    err = run_cli(
        ["serve", "--sae", sae, "--visuals", str(out / "gallery"), "--images", str(missing)], capsys
    )
    assert str(missing) in err and "not found" in err


@pytest.mark.slow
def test_a_store_whose_images_moved_still_gets_its_gallery_with_a_warning(quickstart, tmp_path, caplog):
    out, sae = quickstart
    store = tmp_path / "store"
    shutil.copytree(next((out / "shards").iterdir()), store)
    images = json.loads((store / "images.json").read_text())
    images["source"]["root"] = str(tmp_path / "moved-away")
    (store / "images.json").write_text(json.dumps(images))
    main(["visuals", "--sae", sae, "--shards", str(store), "--out", str(tmp_path / "v"), "--n-latents", "2"])
    assert (tmp_path / "v" / "index.html").exists()
    assert "moved-away, which is no longer a folder (moved?)" in caplog.text
    assert "Give --images with their new location" in caplog.text


# 8. Odd JSON gets a 4xx with a message, never a 500.

BIG = "9" * 5000


@pytest.mark.slow
@pytest.mark.parametrize(
    "path,body,status",
    [
        ("/api/predict", '{"image": "s1", "edits": [{"latent": 1, "value": NaN}]}', 400),
        ("/api/predict", '{"image": "s1", "edits": [{"latent": 1, "value": Infinity}]}', 400),
        ("/api/predict", '{"image": "s1", "edits": [{"latent": 1, "value": -1e999}]}', 400),
        ("/api/predict", '{"image": "s1", "edits": [{"latent": 1, "value": 1001}]}', 400),
        ("/api/predict", '{"image": "s1", "edits": [{"latent": 1, "value": 1e308}]}', 400),
        ("/api/predict", '{"image": "s1", "edits": [{"latent": 99999999999, "value": 1}]}', 400),
        ("/api/predict", f'{{"image": "s1", "edits": [{{"latent": {BIG}, "value": 1}}]}}', 422),
        ("/api/predict", '{"image": "s1", "edits": [{"latent": 1e400, "value": 1}]}', 422),
        ("/api/predict", '{"image": "s1", "edits": [{"latent": 3.5, "value": 1}]}', 422),
        ("/api/predict", '{"image": "s1", "edits": [null]}', 422),
        ("/api/predict", '{"image": "s1", "edits": {}}', 422),
        ("/api/predict", '{"image": "s1", "patches": [-1]}', 400),
        ("/api/predict", '{"image": "s1", "patches": [NaN]}', 422),
        ("/api/predict", '{"image": "s1", "client": 5}', 422),
        ("/api/latents", '{"image": "s1", "top": 1e9}', 422),
        ("/api/latents", f'{{"image": "s1", "top": {BIG}}}', 422),
        ("/api/latents", f'{{"image": "s1", "patches": [{BIG}]}}', 422),
        ("/api/latents", '{"image": "s1", "patches": [1e300]}', 422),
        ("/api/latents", '{"image": "s1", "include_dense": 5}', 422),
        ("/api/latents", '{"image": ["s1"]}', 422),
        ("/api/latents", "[]", 422),
        ("/api/latents", "null", 422),
        ("/api/latents", "", 422),
        ("/api/latents", "[" * 100_000 + "]" * 100_000, 422),  # nested too deeply for json.loads
        ("/api/latents", b'{"image": "s1\xff"}', 422),  # not UTF-8
        ("/api/latents", '{"image": "s\\u0000"}', 404),
    ],
)
def test_odd_json_gets_a_4xx_with_a_message(client, path, body, status):
    content = body if isinstance(body, bytes) else body.encode()
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert client.get("/api/info").status_code == 200


@pytest.mark.slow
def test_valid_edge_requests_are_answered(client):
    assert client.post("/api/predict", json={"image": "s1", "edits": []}).status_code == 200
    edits = [{"latent": s, "value": -1000 if s % 2 else 1000} for s in range(8)]
    assert client.post("/api/predict", json={"image": "s1", "edits": edits}).status_code == 200
    assert client.get("/api/images", params={"offset": 10**20}).json()["images"] == []
    assert client.get(f"/api/latents/s1/{10**20}").status_code == 400


@pytest.mark.slow
def test_requests_from_another_site_s_page_are_refused(built):
    """A page elsewhere may post to 127.0.0.1 without reading the answer (a "simple" request needs no
    CORS preflight); the browser names that page in Origin."""
    client = TestClient(built[0], headers={"Host": "127.0.0.1:8000"})
    ok = client.get("/api/info", headers={"Origin": "http://127.0.0.1:8000"})
    assert ok.status_code == 200
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example:8000"):
        response = client.post(
            "/api/upload", content=b"x", headers={"Origin": origin, "Content-Type": "text/plain"}
        )
        assert response.status_code == 403 and "are refused" in response.json()["error"], origin


@pytest.mark.slow
def test_request_fields_are_strict(client):
    """Pydantic would read "3" as a patch index and "true" as a boolean: refused instead."""
    bad = [
        ("/api/latents", {"image": "s0", "include_dense": "true"}, "include_dense"),
        ("/api/latents", {"image": "s0", "patches": ["3"]}, "patches"),
        ("/api/predict", {"image": "s0", "edits": [{"latent": 1, "value": "3"}]}, "value"),
    ]
    for path, body, field in bad:
        response = client.post(path, json=body)
        assert response.status_code == 422 and field in response.json()["error"], (path, body)


@pytest.mark.slow
def test_an_image_too_small_to_read_is_refused_at_upload(client):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    response = client.post("/api/upload", content=buf.getvalue())
    assert response.status_code == 400 and "too small" in response.json()["error"]


@pytest.mark.slow
def test_edits_past_float32_from_tampered_maxima_are_refused(quickstart, tmp_path):
    """A visuals folder whose maxima are finite but huge: value x max overflows float32."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    out, sae = quickstart
    gallery = tmp_path / "gallery"
    shutil.copytree(out / "gallery", gallery)
    path = gallery / "topk.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    tensors["max"][:] = 3e38
    save_file(tensors, path, metadata=meta)
    app, _ = serve.build(serve.Config(sae=sae, visuals=gallery, head="builtin-patch", dense_freq=0.25))
    client = TestClient(app, base_url=f"http://{HOST}", raise_server_exceptions=False)
    response = client.post(
        "/api/predict", json={"image": "s0", "edits": [{"latent": 1, "value": 10, "op": "set"}]}
    )
    assert response.status_code == 400 and "beyond the codes' torch.float32 range" in response.json()["error"]
    tensors["max"][0] = float("inf")
    save_file(tensors, path, metadata=meta)
    with pytest.raises(saev.errors.ConfigError, match="non-finite maxima"):
        serve.build(serve.Config(sae=sae, visuals=gallery, head="builtin-patch"))


@pytest.mark.slow
def test_a_deeply_nested_latents_list_is_refused(quickstart, tmp_path):
    out, sae = quickstart
    gallery = tmp_path / "gallery"
    shutil.copytree(out / "gallery", gallery)
    (gallery / "latents.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(saev.errors.ConfigError, match="not a saev visuals output folder"):
        serve.build(serve.Config(sae=sae, visuals=gallery, head="builtin-patch"))


@pytest.mark.slow
@pytest.mark.parametrize("upload_mb", ["1e308", "0", "-1"])
def test_an_absurd_upload_limit_is_refused(quickstart, capsys, upload_mb):
    out, sae = quickstart
    args = ["serve", "--sae", sae, "--visuals", str(out / "gallery"), "--upload-mb", upload_mb]
    assert "--upload-mb in (0, 1024.0]" in run_cli(args, capsys)


@pytest.mark.slow
def test_a_port_in_use_is_a_clear_error(quickstart, capsys):
    out, sae = quickstart
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        args = ["serve", "--sae", sae, "--visuals", str(out / "gallery"), "--port", str(port)]
        err = run_cli(args, capsys)
    finally:
        taken.close()
    assert f"--host 127.0.0.1 --port {port}: cannot listen there (Address already in use)" in err


@pytest.mark.slow
@pytest.mark.parametrize("missing", ["uvicorn", "fastapi"])
def test_serve_without_the_serve_extra_is_a_one_line_error(quickstart, missing, capsys, monkeypatch):
    out, sae = quickstart
    monkeypatch.setitem(sys.modules, missing, None)
    for name in [m for m in sys.modules if m.startswith("saev.explorer")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(SystemExit) as err:
        main(["serve", "--sae", sae, "--visuals", str(out / "gallery")])
    assert err.value.code == 2
    assert (
        f"saev serve needs the serve extra ({missing} is missing): pip install -e '.[serve]'."
        in capsys.readouterr().err
    )

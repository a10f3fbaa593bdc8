"""Explorer latency and load: a slider move to updated predictions, and 16 clients editing at once.

    python -m benchmarks.explorer [--quickstart quickstart/] [--edits 100] [--load-seconds 60]

1. Latency at the HTTP API (a real uvicorn server on localhost, one client): 100 edits (the
   square concept's latent set to random multiples of its maximum on an image with a square),
   p50 and p95, beside a full forward pass of the same image; for the built-in ViT with the
   quickstart's SAE, and for CLIP ViT-B/16 (OpenCLIP architecture, random weights) with a random
   16x SAE at layer -2.
2. Latency in the browser (headless Chromium, built-in ViT): 100 slider moves, each timed from the
   input event to the updated prediction maps on the page.
3. Load: 16 clients, each on its own images, editing as fast as answers come for 60 s: requests
   answered, failures, superseded (coalesced) requests, latency, and the server's memory.

Needs a quickstart output (`make quickstart`); without one, a reduced quickstart runs first.
"""

import argparse
import asyncio
import json
import pathlib
import random
import shutil
import socket
import statistics
import tempfile
import threading
import time

import httpx
import numpy as np
import open_clip
import skimage.data
import torch
import uvicorn
from PIL import Image

import saev.nn
from benchmarks.common import table
from saev import synthetic
from saev.activations import make_img_transform, make_vit
from saev.cli import main as saev_main
from saev.commands import serve
from saev.explorer.app import create_app
from saev.explorer.session import Explorer, ImageSet, LatentInfo, Limits
from saev.normalization import ActNorm
from saev.steering import SplicedVit
from saev.steering.heads import Head


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def api_latency(url: str, image: str, latent: int, n: int) -> list[float]:
    rng = random.Random(0)
    times = []
    with httpx.Client(base_url=url, timeout=60) as client:
        client.post(
            "/api/predict", json={"image": image, "edits": []}
        )  # the image's prefix is cached from here on
        for _ in range(n):
            body = {
                "image": image,
                "edits": [{"latent": latent, "value": round(rng.uniform(-10, 10), 1)}],
                "client": "bench",
            }
            start = time.perf_counter()
            response = client.post("/api/predict", json=body)
            times.append(1e3 * (time.perf_counter() - start))
            response.raise_for_status()
    return times


def forward_ms(vit, x: torch.Tensor, repeats: int = 10) -> float:
    with torch.inference_mode():
        vit(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            vit(x)
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def quickstart_run(folder: pathlib.Path | None, tmp: pathlib.Path) -> tuple[pathlib.Path, dict]:
    if folder is None or not (folder / "report.json").exists():
        folder = tmp / "qs"
        saev_main(
            [
                "quickstart",
                "--out",
                str(folder),
                "--n-images",
                "600",
                "--n-train",
                "600000",
                "--n-latents",
                "16",
            ]
        )
    report = json.loads((folder / "report.json").read_text())
    sae = pathlib.Path(report["sae"])
    report["sae"] = str(sae if sae.is_absolute() or sae.exists() else folder.parent / sae)
    return folder, report


def square_image(folder: pathlib.Path) -> str:
    for record in reversed(synthetic.load(folder / "images").records):
        if [o.shape for o in record.objects].count("square") == 1:
            return f"s{record.index}"
    raise AssertionError("no square")


def browser_latency(url: str, image: str, latent: int, n: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=flags)
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        page.goto(f"{url}/?image={image}&edits={latent}:1")
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_selector(f"#latents .latent[data-latent='{latent}'] input[type=range]")
        times = page.evaluate(
            """async ([latent, n]) => {
              const slider = document.querySelector(`#latents .latent[data-latent='${latent}'] input[type=range]`);
              const out = [];
              for (let i = 0; i < n; i++) {
                const before = document.body.dataset.predictions;
                const t0 = performance.now();
                slider.value = String(((i * 37) % 200 - 100) / 10);
                slider.dispatchEvent(new Event("input"));
                while (document.body.dataset.predictions === before) await new Promise(r => setTimeout(r, 1));
                out.push(performance.now() - t0);
              }
              return out;
            }""",
            [latent, n],
        )
        browser.close()
    return times


def clip_explorer(tmp: pathlib.Path) -> tuple[Explorer, torch.Tensor]:
    torch.manual_seed(0)
    vit = make_vit("clip", "ViT-B-16/none", pretrained=False)
    d = vit.d_vit
    sae = saev.nn.SparseAutoencoder(
        saev.nn.SaeConfig(d_vit=d, d_sae=16 * d, activation=saev.nn.TopK(k=32), subtract_b_dec=False),
        saev.nn.Provenance(layer=-2, tokens="patches"),
    )
    sae.set_normalization(ActNorm(torch.zeros(d), 1.0))
    spliced = SplicedVit(vit, sae.eval())
    # OpenCLIP's default preprocessing is ViT-B-16/openai's (224 px, OpenAI statistics).
    transform = open_clip.transform.image_transform_v2(open_clip.transform.PreprocessCfg(), is_train=False)
    head = Head(
        "pooled embedding", tuple(f"dim {i}" for i in range(512)), "image", False, lambda x: vit.head(x)
    )
    names = ["astronaut", "chelsea", "coffee", "rocket"]
    images = ImageSet(
        names,
        [None] * len(names),
        lambda i: Image.fromarray(getattr(skimage.data, names[i])()).convert("RGB"),
    )
    latents = LatentInfo(torch.ones(sae.cfg.d_sae), None, {}, {}, set())
    x = transform(images.load(0))[None]
    return Explorer(spliced, transform, head, images, latents, Limits()), x


async def load_test(url: str, n_clients: int, seconds: float, n_images: int, latents: list[int]) -> dict:
    results = {"ok": 0, "superseded": 0, "failed": 0, "ms": []}
    stop = time.perf_counter() + seconds

    async def client(k: int):
        rng = random.Random(k)
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while time.perf_counter() < stop:
                image = f"s{rng.randrange(n_images)}"
                for _ in range(rng.randint(3, 8)):  # a few slider moves per image
                    edits = [{"latent": rng.choice(latents), "value": round(rng.uniform(-10, 10), 1)}]
                    start = time.perf_counter()
                    try:
                        response = await http.post(
                            "/api/predict", json={"image": image, "edits": edits, "client": f"c{k}"}
                        )
                        response.raise_for_status()
                        results["superseded" if response.json().get("superseded") else "ok"] += 1
                    except httpx.HTTPError:
                        results["failed"] += 1
                    results["ms"].append(1e3 * (time.perf_counter() - start))

    await asyncio.gather(*(client(k) for k in range(n_clients)))
    return results


def rss_mb() -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quickstart", type=pathlib.Path, default=pathlib.Path("quickstart"))
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--load-seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        folder, report = quickstart_run(args.quickstart, tmp)
        square = report["concepts"][synthetic.CONCEPTS.index("shape:square")]["latent"]["unit"]
        cfg = serve.Config(
            sae=report["sae"], visuals=folder / "gallery", head="builtin-patch", dense_freq=0.25
        )
        app, explorer = serve.build(cfg)
        server = Server(app)
        image = square_image(folder)
        x = make_img_transform("builtin", "shapes-vit")(explorer.images.load(int(image[1:])))[None]
        rows = []
        api = api_latency(server.url, image, square, args.edits)
        rows.append(["builtin ViT, HTTP API", *percentiles(api), forward_ms(explorer.spliced.vit, x)])
        if shutil.which("chromium") or shutil.which("chromium-browser"):
            browser = browser_latency(server.url, image, square, args.edits)
            rows.append(
                ["builtin ViT, in the browser", *percentiles(browser), forward_ms(explorer.spliced.vit, x)]
            )
        clip, clip_x = clip_explorer(tmp)
        clip_server = Server(create_app(clip))
        clip_api = api_latency(clip_server.url, "s0", 100, args.edits)
        rows.append(
            [
                "CLIP ViT-B/16, layer -2, HTTP API",
                *percentiles(clip_api),
                forward_ms(clip.spliced.vit, clip_x),
            ]
        )
        clip_server.stop()
        print(f"{args.edits} edits each, {torch.get_num_threads()} threads")
        print(table(["path", "p50 ms", "p95 ms", "full forward ms"], rows))
        print()
        latents = [c["latent"]["unit"] for c in report["concepts"]]
        rss = [rss_mb()]
        sampler_stop = threading.Event()

        def sample() -> None:
            while not sampler_stop.wait(1.0):
                rss.append(rss_mb())

        threading.Thread(target=sample, daemon=True).start()
        result = asyncio.run(
            load_test(server.url, args.clients, args.load_seconds, len(explorer.images), latents)
        )
        sampler_stop.set()
        server.stop()
        p50, p95 = percentiles(result["ms"])
        print(
            f"load: {args.clients} clients for {args.load_seconds:.0f} s, cache of {explorer.limits.cache_images} images, "
            f"{len(explorer.images)} images to pick from"
        )
        print(
            table(
                [
                    "answered",
                    "superseded",
                    "failed",
                    "p50 ms",
                    "p95 ms",
                    "RSS start MB",
                    "RSS max MB",
                    "RSS end MB",
                ],
                [[result["ok"], result["superseded"], result["failed"], p50, p95, rss[0], max(rss), rss[-1]]],
            )
        )


if __name__ == "__main__":
    main()

"""The explorer's web app: a JSON API (documented at /api/openapi.json) and the static page.

Every computation runs on a worker thread so the server keeps answering. Prediction requests from
one client are coalesced: while one computes, a newer one replaces any waiting one, and the
replaced request is answered `{"superseded": true}` at once, so dragging a slider never queues
stale work.
"""

import asyncio
import collections
import pathlib
from collections.abc import Callable
from typing import Any

# FastAPI, uvicorn and Starlette are the optional `serve` extra; only `saev serve` imports this module.
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from saev.errors import SaevError
from saev.explorer.session import Explorer

STATIC = pathlib.Path(__file__).parent / "static"
MAX_CLIENTS = 1024


class LatentsRequest(BaseModel):
    image: str = Field(description="Image id from /api/images or /api/upload.")
    patches: list[int] = Field(
        default=[],
        max_length=100_000,
        description="Selected patch indices (row-major); empty: the whole image.",
    )
    top: int = Field(default=20, ge=1, le=200, description="How many latents to list.")
    include_dense: bool = Field(
        default=False, description="Also list latents firing on more than 1% of all tokens."
    )


class EditItem(BaseModel):
    latent: int = Field(ge=0)
    value: float = Field(
        description="The latent is set to this multiple of its largest activation where it fires."
    )


class PredictRequest(BaseModel):
    image: str
    edits: list[EditItem] = Field(default=[], max_length=1000)
    patches: list[int] | None = Field(
        default=None, max_length=100_000, description="Edit only these patches."
    )
    client: str = Field(default="", max_length=100, description="Requests of one client are coalesced.")


class Coalescer:
    """At most one running and one waiting computation per client; older waiting ones are dropped."""

    def __init__(self):
        self.latest: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.locks: dict[str, asyncio.Lock] = {}

    async def run(self, client: str, fn: Callable[[], Any]) -> Any | None:
        seq = self.latest.get(client, 0) + 1
        self.latest[client] = seq
        self.latest.move_to_end(client)
        lock = self.locks.setdefault(client, asyncio.Lock())
        while len(self.latest) > MAX_CLIENTS:
            old, _ = self.latest.popitem(last=False)
            if not self.locks[old].locked():
                del self.locks[old]
        async with lock:
            if self.latest.get(client) != seq:
                return None
            return await run_in_threadpool(fn)


def create_app(explorer: Explorer, visuals: pathlib.Path | None = None) -> FastAPI:
    app = FastAPI(
        title="saev explorer",
        description="Pick an image, select patches, list the SAE latents active there, edit them and compare the model's predictions.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    coalescer = Coalescer()
    upload_limit = explorer.limits.upload_bytes

    @app.exception_handler(SaevError)
    async def bad_input(request: Request, err: SaevError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=400)

    @app.exception_handler(KeyError)
    async def unknown_image(request: Request, err: KeyError) -> JSONResponse:
        return JSONResponse(
            {"error": f"no image {err.args[0]!r}: pick one from /api/images or upload it."}, status_code=404
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:5])
        return JSONResponse({"error": f"invalid request: {details}"}, status_code=422)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info", summary="The SAE, the ViT, the head and the slider range.")
    async def info() -> dict[str, Any]:
        return explorer.info()

    @app.get("/api/images", summary="The images to pick from, a page at a time.")
    async def images(offset: int = Query(0, ge=0), limit: int = Query(60, ge=1, le=500)) -> dict[str, Any]:
        return explorer.image_list(offset, limit)

    @app.get(
        "/api/images/{image_id}/crop.png", summary="The crop the ViT sees, as PNG.", response_class=Response
    )
    async def crop(image_id: str) -> Response:
        return Response(await run_in_threadpool(explorer.crop_png, image_id), media_type="image/png")

    @app.get(
        "/api/images/{image_id}/thumb.png",
        summary="A small picture of the crop (JPEG).",
        response_class=Response,
    )
    async def thumb(image_id: str) -> Response:
        data = await run_in_threadpool(explorer.thumb_jpeg, image_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/upload", summary="Upload an image (the raw file as the request body); returns its id.")
    async def upload(request: Request) -> dict[str, str]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > upload_limit:
            raise HTTPException(413, f"upload of {declared} bytes is over the {upload_limit}-byte limit.")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > upload_limit:
                raise HTTPException(413, f"upload is over the {upload_limit}-byte limit.")
        if not body:
            raise HTTPException(400, "empty upload: send the image file as the request body.")
        return {"id": await run_in_threadpool(explorer.upload, bytes(body))}

    @app.post(
        "/api/latents",
        summary="The latents most active on the selected patches, with their codes on every patch.",
    )
    async def latents(req: LatentsRequest) -> dict[str, Any]:
        return await run_in_threadpool(explorer.latents, req.image, req.patches, req.top, req.include_dense)

    @app.get("/api/latents/{image_id}/{latent}", summary="One latent, as listed by /api/latents.")
    async def one_latent(image_id: str, latent: int) -> dict[str, Any]:
        return await run_in_threadpool(explorer.latent, image_id, latent)

    @app.post("/api/predict", summary="The head's predictions before and after the edits.")
    async def predict(req: PredictRequest) -> dict[str, Any]:
        edits = [(e.latent, e.value) for e in req.edits]
        result = await coalescer.run(req.client, lambda: explorer.predict(req.image, edits, req.patches))
        return {"superseded": True} if result is None else result

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": err.detail}, status_code=err.status_code)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if visuals is not None:
        app.mount("/visuals", StaticFiles(directory=visuals), name="visuals")
    return app

"""The explorer's web app: a JSON API (documented at /api/openapi.json) and the static page.

Every computation runs on a worker thread so the server keeps answering. Prediction requests from
one client are coalesced: while one computes, a newer one replaces any waiting one, and the
replaced request is answered `{"superseded": true}` at once, so dragging a slider never queues
stale work.

Two pure-ASGI middlewares guard every request before any route sees it: `HostCheck` answers only
requests addressed to this server (a page whose name an attacker re-points at 127.0.0.1, DNS
rebinding, would otherwise read the explorer's answers), and `BodyLimit` caps request bodies
before they are read into memory.
"""

import asyncio
import collections
import ipaddress
import logging
import pathlib
import re
import socket
from collections.abc import Callable
from typing import Any, Literal

# FastAPI, uvicorn and Starlette are the optional `serve` extra; only `saev serve` imports this module.
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saev.errors import SaevError
from saev.explorer.session import MAX_ID, MAX_NAME, Explorer, UnknownImage
from saev.steering.edits import Edit

logger = logging.getLogger("saev.serve")

STATIC = pathlib.Path(__file__).parent / "static"
MAX_CLIENTS = 1024
JSON_LIMIT = 2**20
"""Largest request body of the JSON endpoints, in bytes (100,000 patch indices take about 600 kB)."""
LOOPBACK = ("localhost", "127.0.0.1", "::1")
"""Host names every request may use, whatever address the server listens on."""

ImageId = Path(max_length=MAX_ID, description="Image id from /api/images or /api/upload.")


class LatentsRequest(BaseModel):
    model_config = ConfigDict(strict=True)  # "3" is no patch index, "yes" no boolean

    image: str = Field(max_length=MAX_ID, description="Image id from /api/images or /api/upload.")
    patches: list[int] = Field(
        default=[],
        max_length=100_000,
        description="Selected patch indices (row-major); empty: the whole image.",
    )
    top: int = Field(default=20, ge=1, le=200, description="How many latents to list.")
    include_dense: bool = Field(
        default=False,
        description="Also list dense latents (firing on more than --dense-freq of all tokens); "
        "the answer's hidden_dense counts those left out.",
    )


class EditItem(BaseModel):
    model_config = ConfigDict(strict=True)  # "3" is no patch index, "yes" no boolean

    latent: int = Field(ge=0)
    value: float = Field(description="The factor (scale) or the multiple of the latent's maximum (set).")
    op: Literal["scale", "set"] = Field(
        default="scale",
        description="Where the latent fires, scale multiplies its code by value (1 leaves it unchanged, "
        "0 removes it); set sets it to value times its largest activation (-1: the original demos' "
        "suppression).",
    )

    def edit(self) -> Edit:
        return Edit(self.latent, self.op, self.value, relative=self.op == "set")


class PredictRequest(BaseModel):
    model_config = ConfigDict(strict=True)  # "3" is no patch index, "yes" no boolean

    image: str = Field(max_length=MAX_ID)
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


def canonical(name: str) -> str:
    """A host name or address in one spelling for comparison: IP addresses in standard form
    ("0:0::1" is "::1"), names lowercased without a trailing dot ("LocalHost." is "localhost")."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower().removesuffix(".")


_HOST = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([^\[\]:@/\s]+))(?::[0-9]{1,5})?")
"""A Host header: a name or IPv4 address, or an IPv6 address in brackets; then maybe a port."""


def host_header_name(value: str) -> str | None:
    """The name a Host header value addresses, canonical ("[::1]:8000" is "::1"); None if malformed."""
    m = _HOST.fullmatch(value)
    if m is None:
        return None
    if m[1] is None:
        return canonical(m[2])
    try:
        return str(ipaddress.IPv6Address(m[1]))
    except ValueError:
        return None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _header(scope: Scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == name), None)


class HostCheck:
    """Answers only requests whose Host header names this server: a loopback name, the address it
    listens on (`bind`, as --host takes it), or, listening on every interface (0.0.0.0, ::), any IP
    address and this machine's name. DNS rebinding needs a name the attacker controls, so an IP
    address in the Host header is never one; it is accepted only for 0.0.0.0 and ::, where which of
    the machine's addresses the client used is not known in advance."""

    def __init__(self, app: ASGIApp, bind: str):
        self.app = app
        bound = canonical(bind)
        self.every_interface = _is_ip(bound) and ipaddress.ip_address(bound).is_unspecified
        self.names = {*LOOPBACK, bound}
        if self.every_interface:
            self.names.add(socket.gethostname().lower())
        self.advice = ", ".join(f"[{n}]" if ":" in n else n for n in sorted(self.names))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        value = _header(scope, b"host")
        if not self.ours(host_header_name(value) if value is not None else None):
            shown = "none" if value is None else repr(value[:100])
            logger.debug("refused a request with Host %s", shown)
            response = JSONResponse(
                {"error": f"Host {shown} is not this explorer's address; open it at {self.advice}."},
                status_code=421,
            )
            await response(scope, receive, send)
            return
        # A page of another site may send requests here (a form or fetch to 127.0.0.1) without
        # reading the answers; browsers name that page in Origin, so such requests are refused too.
        origin = _header(scope, b"origin")
        if origin is not None and not self.ours(_origin_host(origin)):
            logger.debug("refused a request from Origin %r", origin[:100])
            response = JSONResponse(
                {"error": f"requests from {origin[:100]!r} are refused; use the explorer's own page."},
                status_code=403,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def ours(self, name: str | None) -> bool:
        return name is not None and (name in self.names or (self.every_interface and _is_ip(name)))


def _origin_host(origin: str) -> str | None:
    """The host an Origin header names ("http://127.0.0.1:8000" is "127.0.0.1"); None for "null"
    (a sandboxed or file:// page) and anything that is not http(s)://HOST[:PORT]."""
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme not in ("http", "https"):
        return None
    return host_header_name(rest)


class BodyLimit:
    """Caps request bodies before they are read into memory, by their declared Content-Length and by
    counting the bytes as they arrive (a chunked body declares none): `limits` by path, `default`
    elsewhere. A client that goes away while sending its body ends the request quietly: there is
    nobody left to answer, and it is not the server's error."""

    def __init__(self, app: ASGIApp, default: int, limits: dict[str, int]):
        self.app, self.default, self.limits = app, default, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        declared = _header(scope, b"content-length")
        if declared is not None:
            declared = declared.strip()
            if not re.fullmatch(r"[0-9]+", declared):
                response = JSONResponse({"error": "invalid Content-Length header."}, status_code=400)
                await response(scope, receive, send)
                return
            if len(declared) > 18 or int(declared) > limit:  # int() of thousands of digits raises
                await JSONResponse({"error": _too_large(limit)}, status_code=413)(scope, receive, send)
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                # Raised inside the route's body read, and answered by the app's HTTPException handler.
                raise HTTPException(413, _too_large(limit))
            return message

        try:
            await self.app(scope, counted, send)
        except ClientDisconnect:
            logger.debug(
                "%s %s: the client went away before sending its whole request", scope["method"], scope["path"]
            )


def _too_large(limit: int) -> str:
    return f"request body over this endpoint's {limit:,}-byte limit."


REVALIDATE = {"Cache-Control": "no-cache"}
"""The page and its script change with saev: a browser that kept an older app.js would misread the
answers, so it asks again each time (an unchanged file costs a 304)."""


class Revalidated(StaticFiles):
    """The package's static files, sent with REVALIDATE."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(REVALIDATE)
        return response


def create_app(explorer: Explorer, visuals: pathlib.Path | None = None, host: str = "127.0.0.1") -> FastAPI:
    """The app for `explorer`, serving the `visuals` folder's gallery pages, to requests addressed
    to `host` (the address the server listens on) or a loopback name."""
    app = FastAPI(
        title="saev explorer",
        description="Pick an image, select patches, list the SAE latents active there, edit them and compare the model's predictions.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    coalescer = Coalescer()

    @app.exception_handler(SaevError)
    async def bad_input(request: Request, err: SaevError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=400)

    @app.exception_handler(UnknownImage)
    async def unknown_image(request: Request, err: UnknownImage) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=404)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:5])
        return JSONResponse({"error": f"invalid request: {details}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        cause = err.__cause__
        if isinstance(cause, ValueError | RecursionError):
            # FastAPI's vague "error parsing the body" hides why json.loads refused it (invalid
            # UTF-8, nested too deeply, an integer of thousands of digits): malformed, so say so.
            reason = str(cause).split(";")[0][:200]
            return JSONResponse(
                {"error": f"invalid request: unreadable JSON body ({reason})."}, status_code=422
            )
        return JSONResponse({"error": err.detail}, status_code=err.status_code)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=REVALIDATE)

    @app.get("/api/info", summary="The SAE, the ViT, the head and the slider range.")
    async def info() -> dict[str, Any]:
        return explorer.info()

    @app.get("/api/images", summary="The images to pick from, a page at a time.")
    async def images(offset: int = Query(0, ge=0), limit: int = Query(60, ge=1, le=500)) -> dict[str, Any]:
        return explorer.image_list(offset, limit)

    @app.get("/api/images/find", summary="The image a name from /api/images (or an upload's) stands for.")
    async def find(name: str = Query(min_length=1, max_length=MAX_NAME)) -> dict[str, Any]:
        return explorer.find(name)

    @app.get(
        "/api/images/{image_id}/crop.png", summary="The crop the ViT sees, as PNG.", response_class=Response
    )
    async def crop(image_id: str = ImageId) -> Response:
        return Response(await run_in_threadpool(explorer.crop_png, image_id), media_type="image/png")

    @app.get(
        "/api/images/{image_id}/thumb.png",
        summary="A small picture of the crop (JPEG).",
        response_class=Response,
    )
    async def thumb(image_id: str = ImageId) -> Response:
        data = await run_in_threadpool(explorer.thumb_jpeg, image_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.post(
        "/api/upload",
        summary="Upload an image (the raw file as the request body, at most --upload-mb); returns its id "
        "and the name it is shown under.",
    )
    async def upload(
        request: Request, name: str = Query("", max_length=MAX_NAME, description="The file's name.")
    ) -> dict[str, str]:
        body = await request.body()  # BodyLimit stops it at the upload limit
        if not body:
            raise HTTPException(400, "empty upload: send the image file as the request body.")
        return await run_in_threadpool(explorer.upload, body, name)

    @app.post(
        "/api/latents",
        summary="The latents most active on the selected patches, with their codes on every patch.",
    )
    async def latents(req: LatentsRequest) -> dict[str, Any]:
        return await run_in_threadpool(explorer.latents, req.image, req.patches, req.top, req.include_dense)

    @app.get("/api/names", summary="Named latents whose name contains q (case-insensitive), best F1 first.")
    async def names(q: str = Query(max_length=200), limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
        return explorer.search(q, limit)

    @app.get("/api/latents/{image_id}/{latent}", summary="One latent, as listed by /api/latents.")
    async def one_latent(latent: int, image_id: str = ImageId) -> dict[str, Any]:
        return await run_in_threadpool(explorer.latent, image_id, latent)

    @app.post("/api/predict", summary="The head's predictions before and after the edits.")
    async def predict(req: PredictRequest) -> dict[str, Any]:
        edits = [e.edit() for e in req.edits]
        result = await coalescer.run(req.client, lambda: explorer.predict(req.image, edits, req.patches))
        return {"superseded": True} if result is None else result

    app.mount("/static", Revalidated(directory=STATIC), name="static")

    if visuals is not None:
        app.mount("/visuals", StaticFiles(directory=visuals), name="visuals")
    # The last added runs first: the Host is checked before anything else.
    app.add_middleware(BodyLimit, default=JSON_LIMIT, limits={"/api/upload": explorer.limits.upload_bytes})
    app.add_middleware(HostCheck, bind=host)
    return app

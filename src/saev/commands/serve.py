"""`saev serve`: the interactive explorer, a local web app over an SAE spliced into its ViT."""

import dataclasses
import ipaddress
import logging
import os
import pathlib
import re
import socket
import sys

from safetensors import SafetensorError, safe_open

from saev.activations.families import FamilyName
from saev.commands.base import Command
from saev.data.layout import Tokens
from saev.data.sources import scan_folder
from saev.data.store import open_shards
from saev.errors import ConfigError, ImageError
from saev.explorer.session import Explorer, ImageSet, LatentInfo, Limits
from saev.fileio import check_input
from saev.nn import checkpoints
from saev.steering import inputs
from saev.steering.heads import DEFAULT_PROMPT, open_head
from saev.visuals.lookup import ImageLookup

logger = logging.getLogger("saev.serve")


MAX_UPLOAD_MB = 1024.0
"""Uploads are decoded in memory: a gigabyte is already far past any photograph."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Explore an SAE in the browser: pick an image, select patches, see their latents, edit them, compare predictions."""

    sae: str
    """SAE checkpoint: a path, hf://ORG/NAME or hf://ORG/NAME/FILE."""
    visuals: pathlib.Path
    """The saev visuals output of this SAE: latents' largest activations, frequencies, notes, top images and gallery pages."""
    head: str | None = None
    """builtin-image, builtin-patch (the default for the built-in ViT), PROBE.safetensors (saev probe) or clip-zero-shot:CLASSES.txt."""
    images: pathlib.Path | None = None
    """A folder of images to explore (default: the images of the store the visuals were made from)."""
    shards: pathlib.Path | None = None
    """A store whose images to explore (default: the one the visuals were made from)."""
    vit_family: FamilyName | None = None
    """ViT family; defaults to the SAE's recorded provenance."""
    vit_ckpt: str | None = None
    """ViT checkpoint; defaults to the SAE's recorded provenance."""
    layer: int | None = None
    """Block after which the SAE is spliced in; defaults to the SAE's recorded layer."""
    tokens: Tokens | None = None
    """Tokens the SAE reads and edits; defaults to those it was trained on."""
    force: bool = False
    """Splice the SAE into another ViT, at another layer or on other tokens than it was trained on."""
    prompt: str = DEFAULT_PROMPT
    """clip-zero-shot prompt template; {} is replaced by each class name."""
    host: str = "127.0.0.1"
    """Address to listen on: an IP address, localhost or a host name that resolves. Anything but loopback exposes the explorer to the network. Only requests addressed (Host header) to it or to a loopback name are answered; with 0.0.0.0 or ::, also to any IP address or this machine's name."""
    port: int = 8000
    """Port to listen on."""
    cache_images: int = 64
    """Images whose prefix (activations, codes, predictions) is kept in memory."""
    upload_mb: float = 10.0
    """Largest upload accepted, in MB."""
    dense_freq: float = 0.01
    """Latents firing on more than this fraction of all tokens are dense: hidden from the latent lists unless --dense or the page's toggle shows them."""
    dense: bool = False
    """List dense latents from the start (the page's toggle still hides them)."""
    device: str = "cpu"
    """Torch device, e.g. cpu or cuda."""


@dataclasses.dataclass(frozen=True)
class Result:
    url: str


def build(cfg: Config):
    """The explorer's web app for `cfg` (checked before any server starts)."""
    try:
        from saev.explorer import (
            app as web,
        )  # FastAPI: the optional `serve` extra, needed by this command only
    except ImportError as err:
        raise ConfigError(
            f"saev serve needs the serve extra ({err.name} is missing): pip install -e '.[serve]'."
        ) from None
    if cfg.cache_images < 1 or not 0 < cfg.upload_mb <= MAX_UPLOAD_MB or not 0 < cfg.port < 65536:
        raise ConfigError(
            f"--cache-images must be positive, --upload-mb in (0, {MAX_UPLOAD_MB}], --port in 1..65535."
        )
    if not 0 < cfg.dense_freq <= 1:
        raise ConfigError(f"--dense-freq is a fraction of tokens in (0, 1], got {cfg.dense_freq}.")
    check_host(cfg.host, cfg.port)
    images = _images(cfg)
    sae = checkpoints.load(cfg.sae, device=cfg.device).eval()
    spliced, transform = inputs.spliced_model(
        sae,
        cfg.vit_family,
        cfg.vit_ckpt,
        cfg.layer,
        cfg.tokens,
        force=cfg.force,
        device=cfg.device,
        where=cfg.sae,
    )
    head_spec = cfg.head or ("builtin-patch" if spliced.vit.family == "builtin" else None)
    if head_spec is None:
        raise ConfigError(
            "give --head: a probe (saev probe), clip-zero-shot:CLASSES.txt, or builtin-* for the built-in ViT."
        )
    head = open_head(head_spec, spliced.vit, cfg.prompt)
    latents = LatentInfo.from_visuals(cfg.visuals, sae.cfg.d_sae)
    limits = Limits(
        cache_images=cfg.cache_images, upload_bytes=int(cfg.upload_mb * 2**20), dense_freq=cfg.dense_freq
    )
    # As the user wrote it: -2 stays -2, not block 10 of 12.
    layer = cfg.layer if cfg.layer is not None else sae.provenance.layer
    explorer = Explorer(
        spliced, transform, head, images, latents, limits, layer=layer, title=cfg.sae, dense=cfg.dense
    )
    return web.create_app(explorer, cfg.visuals, cfg.host), explorer


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.IGNORECASE)


def check_host(host: str, port: int) -> None:
    """Refuse a --host uvicorn could not listen on, before any work: an IP address is taken as it
    is; a name must be a valid host name that resolves (offline, only names in /etc/hosts do)."""
    if host == "localhost":
        return
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if host.startswith("["):
        raise ConfigError(f"--host {host}: give an IPv6 address without brackets, e.g. ::1.")
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(
            f"--host {host!r}: not an IP address or a host name (dot-separated labels of letters, digits "
            "and hyphens); e.g. 127.0.0.1, 0.0.0.0 or localhost."
        )
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise ConfigError(
            f"--host {host}: cannot resolve this name ({err.strerror or err}); "
            "give an IP address, e.g. 127.0.0.1 or 0.0.0.0."
        ) from None


def _images(cfg: Config) -> ImageSet:
    if cfg.images is not None:
        folder = scan_folder(cfg.images)
        return ImageSet(
            folder.files, [folder.record(i)["label"] for i in range(len(folder))], _loader(folder.load)
        )
    shards = cfg.shards or _visuals_store(cfg.visuals)
    lookup = ImageLookup(open_shards(shards))
    n = len(lookup.records) if lookup.records else len(lookup.source)
    names = [_store_name(lookup, i) for i in range(n)]
    return ImageSet(names, [lookup.describe(i).get("label") for i in range(n)], lookup.load)


def _store_name(lookup: ImageLookup, i: int) -> str:
    """The recorded path under the image root (subfolders tell apart files of one name), else the
    file name of wherever the image comes from."""
    path = lookup.describe(i).get("path")
    return path if isinstance(path, str) and path else pathlib.PurePath(lookup.path(i)).name


def _loader(load):
    def safe(i: int):
        try:
            return load(i)
        except ImageError:
            return None

    return safe


def _visuals_store(visuals: pathlib.Path) -> pathlib.Path:
    try:
        with safe_open(str(check_input(visuals / "topk.safetensors")), "pt") as f:
            return pathlib.Path((f.metadata() or {})["shards"])
    except (ConfigError, SafetensorError, OSError, KeyError) as err:
        raise ConfigError(
            f"--visuals {visuals}: cannot find the store it was made from ({err}); give --shards or --images."
        ) from None


def run(cfg: Config) -> Result:
    try:
        import uvicorn  # the optional `serve` extra, needed by this command only
    except ImportError as err:
        raise ConfigError(
            f"saev serve needs the serve extra ({err.name} is missing): pip install -e '.[serve]'."
        ) from None
    app, _ = build(cfg)
    if not _loopback(cfg.host):
        logger.warning("listening on %s: anyone who can reach this machine can use the explorer", cfg.host)
    url = f"http://{cfg.host if ':' not in cfg.host else f'[{cfg.host}]'}:{cfg.port}/"
    sock = _listen(cfg.host, cfg.port)
    print(f"saev explorer: {url}", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return Result(url)


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port`, made here so that a port in use or an address this
    machine does not have is a `saev: error`, not uvicorn's exit status 3."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        return socket.create_server(address, family=family)
    except OSError as err:
        # create_server appends the address to strerror; the bare reason reads better.
        reason = os.strerror(err.errno) if (err.errno or 0) > 0 else (err.strerror or str(err))
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({reason}).") from None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


COMMAND = Command(Config, run, lambda result: None)

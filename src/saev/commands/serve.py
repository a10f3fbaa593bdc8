"""`saev serve`: the interactive explorer, a local web app over an SAE spliced into its ViT."""

import dataclasses
import importlib
import logging
import pathlib
import sys
import types
from typing import Annotated

import tyro

from saev.commands.base import Command, SpliceOptions
from saev.errors import ConfigError
from saev.explorer import server
from saev.explorer.session import Explorer, LatentInfo, Limits
from saev.steering import heads

logger = logging.getLogger("saev.serve")


MAX_UPLOAD_MB = 1024.0
"""Uploads are decoded in memory: a gigabyte is already far past any photograph."""

HEAD_HELP = f"{heads.describe()}; by default the model's own head, where it has one."


@dataclasses.dataclass(frozen=True)
class Config(SpliceOptions):
    """Explore an SAE in the browser: pick an image, select patches, see their latents, edit them, compare predictions."""

    visuals: pathlib.Path
    """The saev visuals output of this SAE: latents' largest activations, frequencies, notes, top images and gallery pages."""
    head: Annotated[str | None, tyro.conf.arg(help=HEAD_HELP)] = None
    images: pathlib.Path | None = None
    """A folder of images to explore (default: the images of the store the visuals were made from)."""
    shards: pathlib.Path | None = None
    """A store whose images to explore (default: the one the visuals were made from)."""
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


@dataclasses.dataclass(frozen=True)
class Result:
    url: str


def _serve_extra(module: str) -> types.ModuleType:
    """A module of the optional `serve` extra, needed by this command only."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(
            f"saev serve needs the serve extra ({err.name} is missing): pip install -e '.[serve]'."
        ) from None


def build(cfg: Config):
    """The explorer's web app for `cfg` (checked before any server starts)."""
    web = _serve_extra("saev.explorer.app")  # FastAPI
    if cfg.cache_images < 1 or not 0 < cfg.upload_mb <= MAX_UPLOAD_MB or not 0 < cfg.port < 65536:
        raise ConfigError(
            f"--cache-images must be positive, --upload-mb in (0, {MAX_UPLOAD_MB}], --port in 1..65535."
        )
    if not 0 < cfg.dense_freq <= 1:
        raise ConfigError(f"--dense-freq is a fraction of tokens in (0, 1], got {cfg.dense_freq}.")
    server.check_host(cfg.host, cfg.port)
    images = server.image_set(cfg.images, cfg.shards, cfg.visuals)
    spliced, transform = cfg.splice()
    head_spec = cfg.head or heads.default_head(spliced.vit)
    if head_spec is None:
        raise ConfigError(f"give --head: {heads.describe()}.")
    head = heads.open_head(head_spec, spliced.vit, cfg.prompt)
    latents = LatentInfo.from_visuals(cfg.visuals, spliced.sae.cfg.d_sae)
    limits = Limits(
        cache_images=cfg.cache_images, upload_bytes=int(cfg.upload_mb * 2**20), dense_freq=cfg.dense_freq
    )
    # As the user wrote it: -2 stays -2, not block 10 of 12.
    layer = cfg.layer if cfg.layer is not None else spliced.sae.provenance.layer
    assert layer is not None  # cfg.splice() refuses an SAE that records no layer when none is given
    explorer = Explorer(
        spliced, transform, head, images, latents, limits, layer=layer, title=cfg.sae, dense=cfg.dense
    )
    return web.create_app(explorer, cfg.visuals, cfg.host), explorer


def run(cfg: Config) -> Result:
    uvicorn = _serve_extra("uvicorn")
    app, _ = build(cfg)
    if not server.loopback(cfg.host):
        logger.warning("listening on %s: anyone who can reach this machine can use the explorer", cfg.host)
    url = f"http://{cfg.host if ':' not in cfg.host else f'[{cfg.host}]'}:{cfg.port}/"
    sock = server.listen(cfg.host, cfg.port)
    print(f"saev explorer: {url}", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return Result(url)


COMMAND = Command(Config, run, lambda result: None)

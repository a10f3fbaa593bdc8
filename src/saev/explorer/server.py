"""What `saev serve` needs around the explorer: the images to explore, and a listening socket on
a checked address."""

import ipaddress
import os
import pathlib
import re
import socket
from collections.abc import Callable

from PIL import Image
from safetensors import SafetensorError, safe_open

from saev.data.sources import scan_folder
from saev.data.store import open_shards
from saev.errors import ConfigError, ImageError
from saev.explorer.session import ImageSet
from saev.fileio import check_input
from saev.visuals.lookup import ImageLookup

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


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port`, made here so that a port in use or an address this
    machine does not have is a `saev: error`, not uvicorn's exit status 3."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        return socket.create_server(address, family=family)
    except OSError as err:
        # create_server appends the address to strerror; the bare reason reads better.
        reason = (
            os.strerror(err.errno) if err.errno is not None and err.errno > 0 else (err.strerror or str(err))
        )
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({reason}).") from None


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def image_set(images: pathlib.Path | None, shards: pathlib.Path | None, visuals: pathlib.Path) -> ImageSet:
    """The images of a folder, else of a store (by default the one `visuals` was made from)."""
    if images is not None:
        folder = scan_folder(images)
        return ImageSet(
            folder.files, [folder.record(i)["label"] for i in range(len(folder))], _loader(folder.load)
        )
    lookup = ImageLookup(open_shards(shards or _visuals_store(visuals)))
    if lookup.records:
        n = len(lookup.records)
    else:
        assert lookup.source is not None  # ImageLookup refuses a store with neither
        n = len(lookup.source)
    names = [_store_name(lookup, i) for i in range(n)]
    return ImageSet(names, [lookup.describe(i).get("label") for i in range(n)], lookup.load)


def _store_name(lookup: ImageLookup, i: int) -> str:
    """The recorded path under the image root (subfolders tell apart files of one name), else the
    file name of wherever the image comes from."""
    path = lookup.describe(i).get("path")
    return path if isinstance(path, str) and path else pathlib.PurePath(lookup.path(i)).name


def _loader(load: Callable[[int], Image.Image]) -> Callable[[int], Image.Image | None]:
    def safe(i: int) -> Image.Image | None:
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

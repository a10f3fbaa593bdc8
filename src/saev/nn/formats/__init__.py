"""Every SAE file format saev reads or writes, by name; `detect` tells which one a path holds.

To add a format, write `saev/nn/formats/<name>.py` with `read(path, allow_nonfinite)` (and `write(path,
sae)` if saev can write it), register it in `FORMATS` and teach `detect` its files. Readers never run
code from a file: JSON, safetensors and `torch.load(weights_only=True)` only.
"""

import dataclasses
import pathlib
from collections.abc import Callable

from saev.errors import CheckpointError
from saev.fileio import check_input, existing_kind
from saev.nn.formats import checks, native, prisma, reference, saelens, sparsify
from saev.nn.modeling import SparseAutoencoder


@dataclasses.dataclass(frozen=True)
class Format:
    name: str
    description: str
    read: Callable[[pathlib.Path, bool], SparseAutoencoder]
    """(file or folder, allow_nonfinite) -> SAE."""
    write: Callable[[pathlib.Path, SparseAutoencoder], None] | None
    """Writes the SAE at the path (a file or a folder, see `folder`); None if saev cannot write it."""
    folder: bool
    """Whether the format is a folder of files rather than one file."""


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("native", "saev's safetensors file (sae.safetensors)", native.read, native.dump, False),
        Format(
            "saev-pt",
            "the reference saev sae.pt (JSON header + torch zip)",
            reference.read,
            reference.dump,
            False,
        ),
        Format(
            "saelens",
            "SAELens folder (cfg.json + sae_weights.safetensors)",
            saelens.read,
            saelens.write,
            True,
        ),
        Format(
            "sparsify", "sparsify folder (cfg.json + sae.safetensors)", sparsify.read, sparsify.write, True
        ),
        Format("prisma", "ViT-Prisma .pt file or folder (config.json + weights)", prisma.read, None, False),
    )
}
"""By name: the `--to` choices of `saev convert` are the ones with a writer."""

WRITABLE = tuple(name for name, f in FORMATS.items() if f.write is not None)
HUB_FILES = ("cfg.json", "config.json", "sae.pt", "sae.safetensors", *saelens.FILES, *prisma.FILES)
"""Files a Hub folder may hold. `saev.nn.checkpoints` takes those of them already in the Hugging Face
cache, or, when none is, lists the repo once and downloads those it has (so a cached folder loads
offline); `saev export` and `saev convert` write and clean up the same names."""


def detect(path: pathlib.Path) -> str:
    """The name of the format at `path` (a file or a folder), or a CheckpointError saying what is there."""
    if path.is_dir():
        return _detect_folder(path)
    if existing_kind(path) is None:
        raise CheckpointError(f"{path}: no such file or folder.")
    check_input(path, "checkpoint file", CheckpointError)  # a FIFO, a device, a symlink loop
    head = _head(path)
    if native.looks_like_safetensors(head):
        folder_config = (path.parent / "cfg.json").is_file() or (path.parent / "config.json").is_file()
        if folder_config and not native.is_native(path):
            return _detect_folder(path.parent)
        return "native"  # whose reader names what is wrong with a damaged or foreign file
    if head.startswith(b"PK\x03\x04"):
        return "prisma"  # a bare torch.save archive: the reference always writes a JSON line first
    return "saev-pt"


def _detect_folder(path: pathlib.Path) -> str:
    has = {p.name for p in path.iterdir()}
    if "cfg.json" in has and "sae_weights.safetensors" in has:
        return "saelens"
    if "cfg.json" in has and "sae.safetensors" in has:
        return "sparsify"
    if "config.json" in has and prisma.weights_in(path) is not None:
        return "prisma"
    if "sae.safetensors" in has:
        return "native"
    if "sae.pt" in has:
        return "saev-pt"
    raise CheckpointError(
        f"{path}: a folder without a recognised SAE. Expected one of: sae.safetensors (saev), sae.pt "
        "(reference saev), cfg.json + sae_weights.safetensors (SAELens), cfg.json + sae.safetensors "
        "(sparsify), config.json + weights.pt or n_images_<N>.pt (ViT-Prisma); it holds "
        f"{', '.join(sorted(has)[:12]) or 'nothing'}."
    )


def _head(path: pathlib.Path) -> bytes:
    # read_regular_file refuses FIFOs and devices before anything is opened.
    return checks.read_regular_file(path, limit=16)


def read(path: pathlib.Path, allow_nonfinite: bool = False) -> SparseAutoencoder:
    """The SAE at `path` in whichever format it is."""
    name = detect(path)
    if path.is_dir() and name in ("native", "saev-pt"):
        path = path / ("sae.safetensors" if name == "native" else "sae.pt")
    elif FORMATS[name].folder and not path.is_dir():
        path = path.parent  # the weights file of a folder format
    return FORMATS[name].read(path, allow_nonfinite)

"""Load and save SAEs in any format saev knows (`saev.nn.formats`), from disk, the Hugging Face Hub or the catalogue.

`load` accepts a file, a folder (SAELens, sparsify, ViT-Prisma or one holding `sae.safetensors` /
`sae.pt`), `hf://ORG/NAME[/SUBFOLDER or /FILE]`, or the name of a published SAE in the catalogue
(`saev.nn.catalog`), whose ViT, layer and token facts then fill in what the file does not record.
Files come from the internet and from disks, so loading trusts nothing in them (see
`saev.nn.formats.checks`).
"""

import os
import pathlib
import posixpath
from typing import NamedTuple

import huggingface_hub
import torch
from huggingface_hub import errors as hf_errors
from huggingface_hub import utils as hf_validators

from saev.errors import CheckpointError
from saev.nn import catalog, formats
from saev.nn.formats.checks import WEIGHT_NAMES
from saev.nn.formats.native import CHECKSUM_KEY
from saev.nn.modeling import SparseAutoencoder

__all__ = [
    "CHECKSUM_KEY",
    "HF_PREFIX",
    "WEIGHT_NAMES",
    "Located",
    "dump",
    "load",
    "locate",
    "resolve",
    "save",
]

HF_PREFIX = "hf://"
_FILE_SUFFIXES = (".pt", ".pth", ".safetensors")


def load(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, allow_nonfinite: bool = False
) -> SparseAutoencoder:
    """Load an SAE from a local file or folder, `hf://ORG/NAME[/PATH]`, or a catalogue name.

    The format is detected from the files (see `saev.nn.formats.FORMATS`). Every config value is
    checked, and the shapes it implies are compared with the tensors, before a model is built. NaN
    or infinite tensors and a normalisation scale that is not positive are refused unless
    `allow_nonfinite` (to inspect a diverged run).
    """
    found = locate(path)
    sae = formats.read(found.path, allow_nonfinite)
    if found.entry is not None:
        sae.provenance = found.entry.fill(sae.provenance)
    return sae.to(device)


class Located(NamedTuple):
    path: pathlib.Path
    """The local file or folder (in the Hugging Face cache for hf:// and catalogue names)."""
    entry: catalog.Entry | None
    """The catalogue entry the name or address refers to, if any."""


def locate(path: str | os.PathLike) -> Located:
    """Where the SAE named by `path` (see `load`) is on this machine, downloading it if needed and allowed."""
    text = os.fspath(path)
    entry = catalog.find(text)
    return Located(
        resolve(entry.uri if entry is not None and not text.startswith(HF_PREFIX) else text), entry
    )


def dump(path: str | os.PathLike, sae: SparseAutoencoder) -> None:
    """Write `sae` atomically: `.safetensors` in the native format, `.pt` in the reference V1/V2 form."""
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        save(path, sae, "native")
    elif path.suffix == ".pt":
        save(path, sae, "saev-pt")
    else:
        raise CheckpointError(f"{path}: unknown checkpoint suffix {path.suffix!r}; use .safetensors or .pt.")


def save(path: str | os.PathLike, sae: SparseAutoencoder, fmt: str) -> None:
    """Write `sae` in format `fmt` (one of `formats.WRITABLE`): a file, or a folder for SAELens and sparsify."""
    write = formats.FORMATS[fmt].write if fmt in formats.FORMATS else None
    if write is None:
        raise CheckpointError(f"cannot write format {fmt!r}; saev writes {', '.join(formats.WRITABLE)}.")
    write(pathlib.Path(path), sae)


def resolve(path: str) -> pathlib.Path:
    """Map `hf://ORG/NAME[/PATH]` to a file or folder in the Hugging Face cache (downloading if allowed).

    A PATH ending in .pt, .pth or .safetensors names a file; anything else a folder (the repo's
    top level without PATH), whose known SAE files are fetched one by one.
    """
    if not path.startswith(HF_PREFIX):
        return pathlib.Path(path).expanduser()
    parts = path[len(HF_PREFIX) :].strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise CheckpointError(f"{path}: expected hf://ORG/NAME, hf://ORG/NAME/FOLDER or hf://ORG/NAME/FILE.")
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        hf_validators.validate_repo_id(repo_id)
    except hf_errors.HFValidationError as err:
        raise CheckpointError(f"{path}: {repo_id!r} is not a Hugging Face repo id ({err}).") from None
    if any(part in (".", "..") for part in parts[2:]):
        raise CheckpointError(f"{path}: a path inside a repo may not contain '.' or '..' segments.")
    if sub.endswith(_FILE_SUFFIXES):
        local = _download(path, repo_id, sub)
        # Folder formats keep their config next to the weights.
        _fetch_present(path, repo_id, posixpath.dirname(sub), ("cfg.json", "config.json"))
        return local
    found = _fetch_present(path, repo_id, sub, formats.HUB_FILES)
    if found is None:
        raise CheckpointError(
            f"{path}: none of {', '.join(formats.HUB_FILES)} is in the Hugging Face cache, and they cannot "
            "be downloaded now (downloads are off: HF_HUB_OFFLINE). Download the repo once with network "
            "access; afterwards it loads offline."
        )
    if not found:
        raise CheckpointError(f"{path}: the repo holds none of {', '.join(formats.HUB_FILES)} there.")
    return found[0].parent


def _fetch_present(uri: str, repo_id: str, folder: str, names: tuple[str, ...]) -> list[pathlib.Path] | None:
    """Those of `folder/names` the repo has, from the cache if any are there, else after one listing of
    the repo (asking for each file in turn would cost a request, and retries, per missing file).
    None when nothing is cached and downloads are off."""
    paths = [posixpath.join(folder, name) for name in names]
    present = [p for p in paths if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, p), str)]
    if not present:
        try:
            listed = set(huggingface_hub.list_repo_files(repo_id))
        except hf_errors.OfflineModeIsEnabled:
            return None
        except hf_errors.RepositoryNotFoundError:
            raise CheckpointError(
                f"{uri}: no such repo on the Hugging Face Hub (or it is private)."
            ) from None
        # The Hub client raises its HTTP library's own errors (requests or httpx, by version).
        except Exception as err:
            raise CheckpointError(f"{uri}: cannot list the repo on the Hugging Face Hub ({err}).") from None
        present = [p for p in paths if p in listed]
    return [_download(uri, repo_id, p) for p in present]


def _download(uri: str, repo_id: str, filename: str) -> pathlib.Path:
    try:
        return pathlib.Path(huggingface_hub.hf_hub_download(repo_id, filename))
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as err:
        raise CheckpointError(
            f"{uri}: not in the Hugging Face cache and cannot be downloaded now ({err}). "
            "Download it once with network access; afterwards it loads offline."
        ) from None
    except hf_errors.HfHubHTTPError as err:
        raise CheckpointError(f"{uri}: download failed: {err}") from None

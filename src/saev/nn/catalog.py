"""Published vision SAEs by name: where each file is and what it reads (ViT, layer, tokens, dataset).

The facts live in `catalog.json` next to this module, each cited from the publisher's model card,
paper or code. `saev.nn.load(NAME)` (or `catalog:NAME`, or the entry's `hf://` address) loads the
file and fills in the provenance the file does not record, so `saev inspect photo.jpg --sae NAME`
needs no `--vit-*` or `--layer` options.
"""

import dataclasses
import functools
import os
import pathlib
import reprlib
from typing import Any

from saev.errors import CheckpointError, ConfigError
from saev.fileio import read_json
from saev.nn import config

PREFIX = "catalog:"
_FILE = pathlib.Path(__file__).with_name("catalog.json")


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    """What users type: usually the repo id, with the file's folder for repos holding several SAEs."""
    repo: str
    """Hugging Face repo id."""
    file: str
    """Path of the checkpoint (file, or folder for folder formats) inside the repo."""
    vit_family: str
    vit_ckpt: str
    layer: int
    """0-based transformer block whose output the SAE reads."""
    tokens: str = "patches"
    """Tokens it was trained on: patches, cls or all."""
    n_patches_per_img: int | None = None
    format: str = "saev-pt"
    """A `saev.nn.formats.FORMATS` name (informative: the format is detected from the files)."""
    d_vit: int | None = None
    d_sae: int | None = None
    architecture: str = ""
    dataset: str | None = None
    training_tokens: int | None = None
    normalization_known: bool = False
    """Whether the activation statistics the SAE was trained with are published (else see `saev normalize`)."""
    notes: str = ""
    unverified: list = dataclasses.field(default_factory=list)
    """Facts the sources did not confirm."""
    sources: list = dataclasses.field(default_factory=list)
    """Citations: [{"url": ..., "quote": ...}]."""

    @property
    def uri(self) -> str:
        return f"hf://{self.repo}/{self.file}"

    def fill(self, prov: config.Provenance) -> config.Provenance:
        """`prov` with the facts it lacks taken from this entry."""
        facts: dict[str, Any] = {
            "vit_family": self.vit_family,
            "vit_ckpt": self.vit_ckpt,
            "layer": self.layer,
            "tokens": self.tokens,
            "n_patches_per_img": self.n_patches_per_img,
            "dataset": self.dataset,
        }
        return dataclasses.replace(prov, **{k: v for k, v in facts.items() if getattr(prov, k) is None})


ENV = "SAEV_CATALOG"
"""Extra catalogue files (same layout as catalog.json, separated by the OS path separator): a lab's own
SAEs by name. Their entries come after the built-in ones and replace those of the same name."""


def entries() -> tuple[Entry, ...]:
    return _entries(os.environ.get(ENV, ""))


@functools.cache
def _entries(extra: str) -> tuple[Entry, ...]:
    files = [_FILE, *(pathlib.Path(p) for p in extra.split(os.pathsep) if p)]
    by_name = {e.name: e for path in files for e in _read(path)}
    return tuple(by_name.values())


def _read(path: pathlib.Path) -> list[Entry]:
    try:
        data = read_json(path, "saev catalogue", CheckpointError)
        raw = data["entries"]
    except (TypeError, KeyError) as err:
        raise CheckpointError(f"{path}: not a saev catalogue (a JSON object with 'entries'): {err}") from None
    if not isinstance(raw, list):
        raise CheckpointError(f"{path}: not a saev catalogue: 'entries' must be a list of objects.")
    out = []
    for i, e in enumerate(raw):
        try:
            if not isinstance(e, dict):
                raise TypeError("not an object")
            config.check_types(
                Entry, {k: v for k, v in e.items() if k not in ("unverified", "sources")}, "field"
            )
            _check_notes(e.get("unverified", []), e.get("sources", []))
            out.append(Entry(**e))
        except (TypeError, ConfigError) as err:
            label = e.get("name") if isinstance(e, dict) else reprlib.repr(e)
            raise CheckpointError(f"{path}: catalogue entry {i} ({label}): {err}") from None
    return out


def _check_notes(unverified: object, sources: object) -> None:
    """`unverified` is a list of strings and `sources` a list of objects of strings (the citations)."""
    if not isinstance(unverified, list) or not all(isinstance(u, str) for u in unverified):
        raise TypeError("field 'unverified' must be a list of strings")
    if not isinstance(sources, list) or not all(
        isinstance(c, dict) and all(isinstance(v, str) for v in c.values()) for c in sources
    ):
        raise TypeError('field \'sources\' must be a list of {"url": ..., "quote": ...} objects of strings')


def find(text: str) -> Entry | None:
    """The entry `text` names: `catalog:NAME`, a bare NAME that is not a local path, or its hf:// address."""
    by_name = {e.name: e for e in entries()}
    if text.startswith(PREFIX):
        name = text.removeprefix(PREFIX)
        if name not in by_name:
            raise CheckpointError(f"{text}: no such SAE in the catalogue; `saev catalog` lists them.")
        return by_name[name]
    if text.startswith("hf://"):
        address = text.removeprefix("hf://").strip("/")
        # A bare repo names an entry only when its checkpoint is at the top level (the repo's one SAE).
        return next(
            (
                e
                for e in entries()
                if address == f"{e.repo}/{e.file}" or (address == e.repo and "/" not in e.file)
            ),
            None,
        )
    if text in by_name and not os.path.exists(text):
        return by_name[text]
    return None


def rows() -> list[dict[str, Any]]:
    """One summary per entry, for `saev catalog`."""
    return [
        {
            "name": e.name,
            "vit": f"{e.vit_family}/{e.vit_ckpt}",
            "layer": e.layer,
            "tokens": e.tokens,
            "d_sae": e.d_sae,
            "dataset": e.dataset,
            "stats": "yes" if e.normalization_known else "no",
            "unverified": len(e.unverified),
        }
        for e in entries()
    ]

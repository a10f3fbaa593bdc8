"""`saev catalog`: the published vision SAEs saev knows by name."""

import dataclasses
import json
import sys
from typing import NamedTuple

from saev.commands.base import Command
from saev.nn import catalog

COLUMNS = ("name", "vit", "layer", "tokens", "d_sae", "dataset", "stats")


@dataclasses.dataclass(frozen=True)
class Config:
    """List the published vision SAEs saev knows by name. Pass a name to `saev.nn.load`, `saev inspect
    --sae`, `saev visuals --sae` or `saev steer --sae`: the ViT, layer and tokens come from the catalogue.
    'stats' says whether the activation statistics it was trained with are published (if not, see
    `saev normalize`). Facts and their sources: src/saev/nn/catalog.json."""

    json: bool = False
    """Print the full entries (with sources and unverified facts) as JSON."""


class Listing(NamedTuple):
    as_json: bool
    entries: list[catalog.Entry]


def run(cfg: Config) -> Listing:
    return Listing(cfg.json, list(catalog.entries()))


def report(result: Listing) -> None:
    as_json, entries = result
    if as_json:
        print(json.dumps([dataclasses.asdict(e) for e in entries], indent=1))
        return
    rows = [COLUMNS] + [tuple(str(r[c]) for c in COLUMNS) for r in catalog.rows()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"\n{len(entries)} SAEs; load one with saev.nn.load(NAME) or --sae NAME.", file=sys.stderr)


COMMAND = Command(Config, run, report)

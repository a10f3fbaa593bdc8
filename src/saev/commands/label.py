"""`saev label`: a name for every latent it can explain, with its precision, recall and F1 on
images never used to choose it."""

import collections
import dataclasses
import pathlib
import sys
from typing import TYPE_CHECKING

from saev.commands.base import Command
from saev.data.store import open_shards
from saev.fileio import OutputFolder
from saev.naming.settings import NamingSettings

if TYPE_CHECKING:
    from saev.naming.names import Naming


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(NamingSettings):
    """Name each SAE latent after the concept, mask label, class or word it detects best (by F1 on
    half of the images, scored on the other half); latents no candidate explains are left unexplained."""

    sae: str
    """SAE checkpoint: a path, hf://ORG/NAME or hf://ORG/NAME/FILE."""
    shards: pathlib.Path
    """Activation store of the images to name latents on (recorded at the SAE's layer)."""
    images: str | None = None
    """Where the store's images now are, when they moved (a folder root or hf:NAME:SPLIT)."""
    out: OutputFolder = pathlib.Path("names")
    """Folder for names.json (give it to `saev visuals --names`)."""


@dataclasses.dataclass(frozen=True)
class Result:
    names: pathlib.Path
    summary: str


def run(cfg: Config) -> Result:
    # Naming reads the scorecard's inputs, which import scikit-learn (1.8 s); other commands should not pay for it.
    from saev.naming.names import write_names
    from saev.naming.run import label

    settings = NamingSettings(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(NamingSettings)})
    naming = label(cfg.sae, open_shards(cfg.shards), settings, cfg.images)
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_names(naming, cfg.out / "names.json")
    return Result(cfg.out / "names.json", summary(naming))


def summary(naming: "Naming") -> str:
    """How many latents were named, from which sources, and the commonest names."""
    named = [n for n in naming.names.values() if n is not None]
    by_source = collections.Counter(n.source for n in named)
    common = collections.Counter(n.text for n in named).most_common(8)
    lines = [
        f"{len(named):,} of {len(naming.names):,} latents named (F1 >= {naming.method['min_f1']} on "
        f"{naming.method['n_choosing_images']:,} images; scores on {naming.method['n_scoring_images']:,} others), "
        f"{len(naming.names) - len(named):,} unexplained",
    ]
    if named:
        lines.append("by source: " + ", ".join(f"{s} {n}" for s, n in by_source.most_common()))
        lines.append("commonest: " + ", ".join(f"{t} ({n})" for t, n in common))
    return "\n".join(lines)


def report(result: Result) -> None:
    print(result.summary, file=sys.stderr)
    print(result.names)


COMMAND = Command(Config, run, report)

"""What a `saev` command is: a config (its fields are the flags), a run function that calls the
library, and a report that prints the run's result."""

import dataclasses
import typing
from collections.abc import Callable
from typing import Annotated, Any

import tyro

from saev.activations.families import FamilyName, Transform
from saev.data.layout import Tokens
from saev.errors import ConfigError
from saev.fileio import OutputMark, check_output
from saev.nn import checkpoints
from saev.options import check_device, check_finite, check_integers, flag
from saev.steering import heads, inputs
from saev.steering.heads import DEFAULT_PROMPT, Head
from saev.steering.splice import SplicedVit


@dataclasses.dataclass(frozen=True)
class Command:
    config: type
    """Frozen dataclass; its field docstrings are the flags' help."""
    run: Callable[[Any], Any]
    """config -> result; raises SaevError for bad input."""
    report: Callable[[Any], None]
    """Prints the result: paths a script would read on stdout, summaries on stderr."""
    description: str | None = None
    """The command's help text (default: the config's docstring)."""
    distributed: bool = False
    """Whether it runs under torchrun (several processes sharing the work; see docs/scaling-out.md)."""
    check_flags: Callable[[Any, frozenset[str]], None] | None = None
    """Checks of which flags were given, beyond their values (config, the fields named on the command line)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpliceOptions:
    """Options of the commands that splice an SAE into its ViT (steer, evaluate, serve)."""

    sae: str
    """SAE checkpoint: a path, hf://ORG/NAME or hf://ORG/NAME/FILE."""
    vit_family: FamilyName | None = None
    """ViT family; defaults to the SAE's recorded provenance."""
    vit_ckpt: str | None = None
    """ViT checkpoint; defaults to the SAE's recorded provenance."""
    layer: int | None = None
    """Block after which the SAE is spliced in; defaults to the SAE's recorded layer."""
    tokens: Tokens | None = None
    """Tokens the SAE reads (and edits); defaults to those it was trained on."""
    force: bool = False
    """Splice the SAE into another ViT, at another layer or on other tokens than it was trained on."""
    prompt: str = DEFAULT_PROMPT
    """clip-zero-shot prompt template; {} is replaced by each class name."""
    device: str = "cpu"
    """Torch device, e.g. cpu or cuda."""

    def splice(self) -> tuple[SplicedVit, Transform]:
        """The SAE spliced into its ViT, and the ViT's transform."""
        sae = checkpoints.load(self.sae, device=self.device).eval()
        return inputs.spliced_model(
            sae,
            self.vit_family,
            self.vit_ckpt,
            self.layer,
            self.tokens,
            force=self.force,
            device=self.device,
            where=self.sae,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SplicedOptions(SpliceOptions):
    """Options of the commands that splice an SAE into its ViT and read its heads (steer, evaluate)."""

    head: Annotated[tuple[str, ...], tyro.conf.arg(help=f"Heads to read: {heads.describe()}.")]
    batch_size: int = 16
    """Images per forward pass."""

    def spliced(self) -> tuple[SplicedVit, Transform, list[Head]]:
        """The SAE spliced into its ViT, the ViT's transform, and the heads; bad options fail here."""
        if not self.head:
            raise ConfigError("give at least one --head.")
        if len(set(self.head)) < len(self.head):
            raise ConfigError(f"--head {' '.join(self.head)}: a head is given twice.")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be positive, got {self.batch_size}.")
        spliced, transform = self.splice()
        return spliced, transform, [heads.open_head(spec, spliced.vit, self.prompt) for spec in self.head]


def check_options(cfg: Any) -> None:
    """The checks every command shares, made before any work so that a bad flag costs nothing:
    numbers are finite (infinite only where the default is), the device exists on this machine,
    and output folders are not existing files."""
    check_finite(cfg)
    check_integers(cfg)
    hints = typing.get_type_hints(type(cfg), include_extras=True)
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name == "device":
            check_device(value)
        for mark in getattr(hints[field.name], "__metadata__", ()):
            if isinstance(mark, OutputMark) and value is not None:
                check_output(value, mark.want, f"{flag(field.name)} ")

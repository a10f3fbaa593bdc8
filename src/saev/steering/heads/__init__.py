"""Heads: what the model predicts from its last block's tokens, before and after an edit. One
module per kind of head; this registry is the only list of them.

To add one, write `saev/steering/heads/<name>.py` with a `KIND` (a `HeadKind`: how `--head` names
it, what it predicts, how it opens on a model), then register it below. `open_head`, the `--head`
help of every command and the error for an unknown head follow.
"""

from saev.activations.vit import Vit
from saev.errors import ConfigError
from saev.steering.heads import builtin, probe, zero_shot
from saev.steering.heads.base import DEFAULT_PROMPT, Head, HeadKind, Kind
from saev.steering.heads.builtin import builtin_head
from saev.steering.heads.probe import probe_head
from saev.steering.heads.zero_shot import TEXT_FAMILIES, class_names, clip_zero_shot_head

KINDS: dict[str, HeadKind] = {
    kind.name: kind
    # Tried in this order: kinds named by a prefix before those named by a file suffix.
    for kind in (builtin.KIND, zero_shot.KIND, probe.KIND)
}

__all__ = [
    "DEFAULT_PROMPT",
    "KINDS",
    "TEXT_FAMILIES",
    "Head",
    "HeadKind",
    "Kind",
    "builtin_head",
    "class_names",
    "clip_zero_shot_head",
    "default_head",
    "describe",
    "open_head",
    "probe_head",
]


def describe() -> str:
    """The `--head` values, as the help texts list them: `a, b or c`."""
    syntaxes = [kind.syntax for kind in KINDS.values()]
    return " or ".join([", ".join(syntaxes[:-1]), syntaxes[-1]]) if len(syntaxes) > 1 else syntaxes[0]


def markdown_list() -> str:
    """The list of heads for the docs: each `--head` value and what it predicts."""
    return "\n".join(f"- `{kind.syntax}`: {kind.summary}." for kind in KINDS.values())


def open_head(spec: str, vit: Vit, prompt: str = DEFAULT_PROMPT) -> Head:
    """The head `spec` names (the first kind of `KINDS` that matches it) on `vit`."""
    for kind in KINDS.values():
        if kind.matches(spec):
            return kind.open(spec, vit, prompt)
    raise ConfigError(f"--head {spec!r}: expected {describe()}.")


def default_head(vit: Vit) -> str | None:
    """The head to read on `vit` when none is given: the model's own, where it has one."""
    return next((spec for kind in KINDS.values() if (spec := kind.default(vit)) is not None), None)

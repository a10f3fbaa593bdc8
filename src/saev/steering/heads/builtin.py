"""`builtin-image`, `builtin-patch`: the built-in ViT's two concept heads (multi-label: a concept
is predicted where its logit is positive)."""

import typing

from saev import builtin, synthetic
from saev.activations.vit import Vit
from saev.errors import ConfigError
from saev.steering.heads.base import Head, HeadKind, Kind, family

SPECS = ("builtin-image", "builtin-patch")


def builtin_head(vit: Vit, kind: Kind) -> Head:
    if not family(vit).concept_heads:
        raise ConfigError(f"--head builtin-{kind} needs the built-in ViT, not {vit.name}.")
    model = typing.cast(builtin.ConceptVit, vit.model)  # the builtin family checked above
    if kind == "image":
        return Head(
            "builtin-image",
            synthetic.CONCEPTS,
            "image",
            True,
            lambda x: model.image_head(model.norm(x)[:, 0]),
        )
    return Head(
        "builtin-patch", synthetic.CONCEPTS, "patch", True, lambda x: model.patch_head(model.norm(x)[:, 1:])
    )


def _open(spec: str, vit: Vit, prompt: str) -> Head:
    return builtin_head(vit, "image" if spec == "builtin-image" else "patch")


KIND = HeadKind(
    "builtin",
    ", ".join(SPECS),
    "the built-in ViT's concept heads, per image and per patch (multi-label)",
    lambda spec: spec in SPECS,
    _open,
    # The per-patch head shows what an edit of a few patches does where it happens.
    default=lambda vit: "builtin-patch" if family(vit).concept_heads else None,
)

"""`clip-zero-shot:CLASSES.txt`: CLIP zero-shot classification, one class name per line, each
embedded by the model's text tower through a prompt template."""

import collections
import pathlib
import typing

import torch
import torch.nn.functional as F
from torch import Tensor

from saev.activations.families import FAMILIES, openclip
from saev.activations.vit import Vit
from saev.errors import ConfigError
from saev.fileio import read_text
from saev.steering.heads.base import DEFAULT_PROMPT, Head, HeadKind, family

PREFIX = "clip-zero-shot:"
TEXT_FAMILIES = tuple(name for name, f in FAMILIES.items() if f.text_tower)
"""Families whose open_clip models have a text tower for zero-shot classes and words."""


def clip_zero_shot_head(vit: Vit, classes_file: pathlib.Path, prompt: str = DEFAULT_PROMPT) -> Head:
    """CLIP zero-shot classification: cosine similarity of the image embedding to each prompt's."""
    if not family(vit).text_tower:
        raise ConfigError(f"clip-zero-shot needs a CLIP or SigLIP model (a text tower), not {vit.name}.")
    if "{}" not in prompt:
        raise ConfigError(f"--prompt {prompt!r} has no {{}} where the class name goes.")
    classes = class_names(classes_file)
    model: typing.Any = openclip.create(vit.ckpt, "weights")  # an open_clip model (untyped package)
    tokenizer = openclip.tokenizer(vit.ckpt)
    with torch.inference_mode():
        text_CE = F.normalize(model.encode_text(tokenizer([prompt.format(c) for c in classes])), dim=-1)
        scale = float(model.logit_scale.exp())
    text_CE = text_CE.to(next(vit.parameters()).device)

    def fn(x_BTD: Tensor) -> Tensor:
        image_BE = vit.head(x_BTD)
        image_BE = image_BE[0] if isinstance(image_BE, tuple) else image_BE
        return scale * F.normalize(image_BE, dim=-1) @ text_CE.T

    return Head(f"{PREFIX}{classes_file}", classes, "image", False, fn)


def class_names(path: pathlib.Path) -> tuple[str, ...]:
    """The class names of a text file, one per line (blank lines skipped): at least two, each once."""
    classes = tuple(line.strip() for line in read_text(path, "class-name file").splitlines() if line.strip())
    if len(classes) < 2:
        raise ConfigError(f"{path}: needs at least two class names, one per line; found {len(classes)}.")
    repeated = sorted(c for c, n in collections.Counter(classes).items() if n > 1)
    if repeated:
        raise ConfigError(f"{path}: class names {repeated} appear more than once; each class needs one line.")
    return classes


KIND = HeadKind(
    "clip-zero-shot",
    f"{PREFIX}CLASSES.txt",
    "CLIP or SigLIP zero-shot classification: one class name per line, each embedded by the "
    "model's text tower through --prompt",
    lambda spec: spec.startswith(PREFIX),
    lambda spec, vit, prompt: clip_zero_shot_head(vit, pathlib.Path(spec.removeprefix(PREFIX)), prompt),
)

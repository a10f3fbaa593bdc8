"""Heads: what the model predicts from its last block's tokens, before and after an edit.

- `builtin-image`, `builtin-patch`: the built-in ViT's two concept heads (multi-label: a concept is
  predicted where its logit is positive);
- a linear probe from `saev probe` (`PATH.safetensors`): classification or segmentation;
- `clip-zero-shot:CLASSES.txt`: CLIP zero-shot classification, one class name per line, each
  embedded by the model's text tower through a prompt template.
"""

import collections
import dataclasses
import pathlib
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saev import synthetic
from saev.activations.families import openclip
from saev.activations.vit import Vit
from saev.errors import ConfigError, ModelError
from saev.fileio import read_text
from saev.steering.edits import finite
from saev.steering.probe_format import load_probe

Kind = Literal["image", "patch"]
DEFAULT_PROMPT = "a photo of a {}."
TEXT_FAMILIES = ("clip", "siglip")
"""Families whose open_clip models have a text tower for zero-shot classes and words."""


@dataclasses.dataclass(frozen=True)
class Head:
    name: str
    classes: tuple[str, ...]
    kind: Kind
    """One prediction per image, or one per patch."""
    multilabel: bool
    """Each class predicted independently (logit > 0), or one class per image/patch (argmax)."""
    fn: Callable[[Tensor], Tensor]

    @torch.inference_mode()
    def logits(self, final_BTD: Float[Tensor, "batch tokens d_vit"]) -> Tensor:
        """[batch, classes] or [batch, patches, classes] from the last block's output."""
        logits = self.fn(final_BTD)
        if not finite(logits):
            # Predictions from NaN logits are arbitrary (argmax, comparisons): refuse them.
            raise ModelError(
                f"head {self.name}: its outputs are not finite (inputs up to "
                f"{float(final_BTD.abs().amax()):.3g}); its weights may be too large."
            )
        return logits

    def predict(self, logits: Tensor) -> Bool[Tensor, "..."]:
        """Which classes are predicted, as booleans over the last axis."""
        if self.multilabel:
            return logits > 0
        return F.one_hot(logits.argmax(-1), len(self.classes)).bool()

    def changed(self, before: Tensor, after: Tensor) -> Bool[Tensor, "..."]:
        """Which images or patches predict other classes after an edit than before: the one
        definition of "changed" that `saev steer` prints, reports and draws."""
        return (self.predict(before) != self.predict(after)).any(-1)

    def probs(self, logits: Tensor) -> Tensor:
        return logits.sigmoid() if self.multilabel else logits.softmax(-1)

    def top_class(self, logits: Tensor) -> Int[Tensor, "..."]:
        """The highest-scoring predicted class of each image or patch (-1 where none is predicted)."""
        predicted = self.predict(logits)
        best = torch.where(predicted, logits, -torch.inf).argmax(-1)
        return torch.where(predicted.any(-1), best, -1)


def builtin_head(vit: Vit, kind: Kind) -> Head:
    if vit.family != "builtin":
        raise ConfigError(f"--head builtin-{kind} needs the built-in ViT, not {vit.name}.")
    model = vit.model
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


def probe_head(vit: Vit, path: pathlib.Path) -> Head:
    probe = load_probe(path)
    if (probe.vit_family, probe.vit_ckpt) != (vit.family, vit.ckpt):
        raise ConfigError(f"{path}: a probe of {probe.vit_family}/{probe.vit_ckpt}, not of {vit.name}.")
    if probe.weight_DC.shape[0] != vit.d_vit:
        raise ConfigError(
            f"{path}: reads {probe.weight_DC.shape[0]}-dim features; {vit.name} makes {vit.d_vit}."
        )
    if probe.task == "classification" and probe.pool == "cls" and not vit.layout.has_cls:
        raise ConfigError(f"{path}: reads the [CLS] token (pool 'cls'), which {vit.name} does not have.")
    weight, bias = (
        probe.weight_DC.to(next(vit.parameters()).device),
        probe.bias_C.to(next(vit.parameters()).device),
    )
    loaded = dataclasses.replace(probe, weight_DC=weight, bias_C=bias)
    n_prefix = vit.layout.n_prefix
    kind: Kind = "patch" if probe.task == "segmentation" else "image"
    return Head(str(path), probe.classes, kind, False, lambda x: loaded.logits(vit.features(x), n_prefix))


def clip_zero_shot_head(vit: Vit, classes_file: pathlib.Path, prompt: str = DEFAULT_PROMPT) -> Head:
    """CLIP zero-shot classification: cosine similarity of the image embedding to each prompt's."""
    if vit.family not in TEXT_FAMILIES:
        raise ConfigError(f"clip-zero-shot needs a CLIP or SigLIP model (a text tower), not {vit.name}.")
    if "{}" not in prompt:
        raise ConfigError(f"--prompt {prompt!r} has no {{}} where the class name goes.")
    classes = class_names(classes_file)
    model = openclip.create(vit.ckpt, "weights")
    tokenizer = openclip.tokenizer(vit.ckpt)
    with torch.inference_mode():
        text_CE = F.normalize(model.encode_text(tokenizer([prompt.format(c) for c in classes])), dim=-1)
        scale = float(model.logit_scale.exp())
    text_CE = text_CE.to(next(vit.parameters()).device)

    def fn(x_BTD: Tensor) -> Tensor:
        image_BE = vit.head(x_BTD)
        image_BE = image_BE[0] if isinstance(image_BE, tuple) else image_BE
        return scale * F.normalize(image_BE, dim=-1) @ text_CE.T

    return Head(f"clip-zero-shot:{classes_file}", classes, "image", False, fn)


def class_names(path: pathlib.Path) -> tuple[str, ...]:
    """The class names of a text file, one per line (blank lines skipped): at least two, each once."""
    classes = tuple(line.strip() for line in read_text(path, "class-name file").splitlines() if line.strip())
    if len(classes) < 2:
        raise ConfigError(f"{path}: needs at least two class names, one per line; found {len(classes)}.")
    repeated = sorted(c for c, n in collections.Counter(classes).items() if n > 1)
    if repeated:
        raise ConfigError(f"{path}: class names {repeated} appear more than once; each class needs one line.")
    return classes


def open_head(spec: str, vit: Vit, prompt: str = DEFAULT_PROMPT) -> Head:
    """`builtin-image`, `builtin-patch`, `PROBE.safetensors` or `clip-zero-shot:CLASSES.txt`."""
    if spec in ("builtin-image", "builtin-patch"):
        return builtin_head(vit, spec.removeprefix("builtin-"))
    if spec.startswith("clip-zero-shot:"):
        return clip_zero_shot_head(vit, pathlib.Path(spec.removeprefix("clip-zero-shot:")), prompt)
    if spec.endswith(".safetensors"):
        return probe_head(vit, pathlib.Path(spec))
    raise ConfigError(
        f"--head {spec!r}: expected builtin-image, builtin-patch, a probe (.safetensors from saev probe) "
        "or clip-zero-shot:CLASSES.txt."
    )

"""What a head is (`Head`), and what a kind of head provides to the registry (`HeadKind`)."""

import dataclasses
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saev.activations import families
from saev.activations.families.base import Family
from saev.activations.vit import Vit
from saev.errors import ModelError
from saev.steering.edits import finite

Kind = Literal["image", "patch"]
DEFAULT_PROMPT = "a photo of a {}."


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


def _no_default(vit: Vit) -> str | None:
    return None


@dataclasses.dataclass(frozen=True)
class HeadKind:
    """One kind of `--head` (one module of `saev.steering.heads`)."""

    name: str
    syntax: str
    """How `--head` names a head of this kind, as the help texts list it."""
    summary: str
    """What the head predicts, in a sentence (docs)."""
    matches: Callable[[str], bool]
    """Whether a `--head` value names a head of this kind."""
    open: Callable[[str, Vit, str], Head]
    """(spec, vit, prompt) -> the head; ConfigError when the model cannot have it."""
    default: Callable[[Vit], str | None] = _no_default
    """The `--head` value to read on this model when none is given (saev serve), if any."""


def family(vit: Vit) -> Family:
    """The family of `vit`, whose capabilities say which heads it can have."""
    return families.get(vit.family)

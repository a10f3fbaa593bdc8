"""Candidate names and where each is true: concepts and mask labels per patch, class labels and
zero-shot words per image."""

import dataclasses
import itertools
import logging
import pathlib
from collections.abc import Sequence
from importlib import resources
from typing import Literal

import numpy as np
import torch
import tqdm
from jaxtyping import Bool

from saev.activations.families import Transform
from saev.activations.vit import Vit
from saev.bench.inputs import Knowledge
from saev.errors import ConfigError
from saev.steering.heads import DEFAULT_PROMPT, TEXT_FAMILIES, clip_zero_shot_head
from saev.visuals.lookup import ImageLookup

logger = logging.getLogger("saev.naming")

Level = Literal["patch", "image"]
Source = Literal["concept", "mask", "label", "text"]
BACKGROUND = "background"
"""Patch candidate true where no concept or mask label is: what dense background latents detect."""


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Names of one source, and on which units (patches or images) each is true."""

    names: tuple[str, ...]
    source: Source
    level: Level
    present: Bool[np.ndarray, "images patches names"] | Bool[np.ndarray, "images names"]
    """[images, patches, names] for patch candidates, [images, names] for image ones."""

    def units(self, images: np.ndarray) -> Bool[np.ndarray, "units names"]:
        """The rows of `images` (positions), flattened to one row per unit."""
        rows = self.present[images]
        return rows.reshape(-1, len(self.names))


def from_knowledge(known: Knowledge) -> list[Candidates]:
    """Patch concepts (built-in world, label masks) with a background candidate, and image classes."""
    found = []
    if known.patch_NPC is not None and known.concepts:
        patch_NPC = known.patch_NPC
        background = ~patch_NPC.any(-1, keepdims=True)
        source: Source = "concept" if known.source == "built-in world" else "mask"
        found.append(
            Candidates(
                (*known.concepts, BACKGROUND), source, "patch", np.concatenate([patch_NPC, background], -1)
            )
        )
        found += _conjunctions(known.concepts, patch_NPC, source)
    return found


def _conjunctions(names: Sequence[str], patch_NPC: np.ndarray, source: Source) -> list[Candidates]:
    """Pairs of concepts of different axes ("shape:circle & colour:red") on the same patch: many
    latents detect a combination rather than one concept. Names without an axis prefix have none."""
    axis = [n.split(":", 1)[0] if ":" in n else None for n in names]
    pairs = [
        (a, b)
        for a, b in itertools.combinations(range(len(names)), 2)
        if axis[a] is not None and axis[b] is not None and axis[a] != axis[b]
    ]
    if not pairs:
        return []
    present = np.stack([patch_NPC[..., a] & patch_NPC[..., b] for a, b in pairs], -1)
    return [Candidates(tuple(f"{names[a]} & {names[b]}" for a, b in pairs), source, "patch", present)]


def from_labels(labels: Sequence[str | None]) -> list[Candidates]:
    """Each image's class (class folders, `hf:` labels) as an image candidate; none with fewer than two classes."""
    classes = tuple(sorted({label for label in labels if label is not None}))
    if len(classes) < 2:
        return []
    index = {c: k for k, c in enumerate(classes)}
    present = np.zeros((len(labels), len(classes)), dtype=bool)
    for i, label in enumerate(labels):
        if label is not None:
            present[i, index[label]] = True
    return [Candidates(classes, "label", "image", present)]


def default_vocabulary() -> pathlib.Path:
    """The shipped word list: common objects, scenes, parts, materials, colours and textures."""
    return pathlib.Path(str(resources.files("saev.naming") / "vocabulary.txt"))


@torch.inference_mode()
def from_text(
    vit: Vit,
    transform: Transform,
    lookup: ImageLookup,
    images: Sequence[int],
    vocabulary: pathlib.Path,
    *,
    top_words: int = 3,
    batch_size: int = 32,
    device: str = "cpu",
) -> list[Candidates]:
    """Zero-shot words: a word is true of an image when it is among the `top_words` words the
    model's text tower matches best to the image (prompted as 'a photo of a WORD.')."""
    if vit.family not in TEXT_FAMILIES:
        raise ConfigError(f"--vocabulary needs a CLIP-family model with a text tower, not {vit.name}.")
    head = clip_zero_shot_head(vit, vocabulary, DEFAULT_PROMPT)
    if top_words < 1 or top_words >= len(head.classes):
        raise ConfigError(
            f"--top-words must be in [1, {len(head.classes) - 1}] for {vocabulary}, got {top_words}."
        )
    present = np.zeros((len(images), len(head.classes)), dtype=bool)
    read = np.zeros(len(images), dtype=bool)
    for start in tqdm.trange(0, len(images), batch_size, desc="words", unit="batch"):
        chunk = list(range(start, min(start + batch_size, len(images))))
        attempts = [(k, lookup.load(images[k])) for k in chunk]
        loaded = [(k, img) for k, img in attempts if img is not None]
        if not loaded:
            continue
        x_B3HW = torch.stack([transform(img) for _, img in loaded]).to(device)
        logits_BC = head.logits(vit.run_to(x_B3HW, -1))
        top_BK = logits_BC.topk(top_words, dim=-1).indices.cpu().numpy()
        rows = np.array([k for k, _ in loaded])
        present[rows[:, None], top_BK] = True
        read[rows] = True
    if not read.any():
        logger.warning("no image could be read, so no latent is named by words")
        return []
    if not read.all():
        logger.warning("%d image(s) could not be read; words are false of them", int((~read).sum()))
    return [Candidates(head.classes, "text", "image", present)]

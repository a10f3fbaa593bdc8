"""A logit lens for vision heads: which of a head's classes each SAE latent's decoder direction
promotes and which it suppresses, through the rest of the model.

For latent s, the lens adds `scale * d_s` (d_s its decoder direction in the raw activations the
SAE reads, as `SplicedVit.decode_delta` gives it; `scale` a typical code of the latent, such as its
largest activation) to every token the SAE reads at its layer, runs the blocks after that layer
and the head on a batch of images, and averages the change of each class's logit over the images
(and over the patches, for per-patch heads). It measures the direction's direct effect on the
head, on every token alike, not what the latent does where it actually fires (`saev steer` edits
that).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from saev.errors import ConfigError
from saev.steering.edits import Edit, check_latents, finite
from saev.steering.heads import Head
from saev.steering.splice import SplicedVit

MAX_ROWS = 512
"""Images times latents run through the rest of the model at once: a few latents' copies of the batch."""


@dataclasses.dataclass(frozen=True)
class LatentLens:
    """What one latent's decoder direction does to a head's logits, averaged over a batch of images."""

    latent: int
    scale: float
    """The code the direction was added with (in the SAE's units)."""
    head: str
    promoted: tuple[tuple[str, float], ...]
    """Classes whose mean logit rises, largest rise first (at most `top`), with the rise."""
    suppressed: tuple[tuple[str, float], ...]
    """Classes whose mean logit falls, largest fall first (at most `top`), with the (negative) change."""

    def to_json(self) -> dict[str, Any]:
        def rows(pairs: tuple[tuple[str, float], ...]) -> list[dict[str, Any]]:
            return [{"class": c, "logit_delta": d} for c, d in pairs]

        return {
            "latent": self.latent,
            "scale": self.scale,
            "head": self.head,
            "promoted": rows(self.promoted),
            "suppressed": rows(self.suppressed),
        }


@torch.inference_mode()
def logit_deltas(
    spliced: SplicedVit,
    head: Head,
    x_B3HW: Float[Tensor, "batch 3 height width"],
    latents: Sequence[int],
    scales_L: Sequence[float] | Float[Tensor, " latents"],
    *,
    max_rows: int = MAX_ROWS,
) -> Float[Tensor, "latents classes"]:
    """Mean change of each class's logit when `scales_L[k]` times latent `latents[k]`'s decoder
    direction is added to every token the SAE reads, over the images `x_B3HW` (and their patches).

    The model up to the SAE's layer runs once; the blocks after it run once per chunk of latents,
    each chunk a copy of the batch per latent, at most `max_rows` images in all."""
    scales_L = torch.as_tensor(scales_L, dtype=torch.float32).flatten()
    if len(scales_L) != len(latents):
        raise ConfigError(f"{len(latents)} latents but {len(scales_L)} scales: give one scale per latent.")
    if not finite(scales_L):
        raise ConfigError("the lens scales must be finite.")
    check_latents([Edit(s, "set", 0.0) for s in latents], spliced.sae.cfg.d_sae, "the SAE")
    prefix = spliced.prefix(x_B3HW)
    n_images, n_classes = len(x_B3HW), len(head.classes)
    clean_C = head.logits(spliced.finish(prefix.tokens_BTD)).reshape(-1, n_classes).float().mean(0)
    codes_L1S = torch.zeros(len(latents), 1, spliced.sae.cfg.d_sae, device=spliced.device)
    codes_L1S[torch.arange(len(latents)), 0, torch.as_tensor(list(latents), dtype=torch.long)] = scales_L.to(
        spliced.device
    )
    directions_L1D = spliced.decode_delta(torch.zeros_like(codes_L1S), codes_L1S)
    per_chunk = max(1, max_rows // max(n_images, 1))
    out = []
    for start in range(0, len(latents), per_chunk):
        chunk_K1D = directions_L1D[start : start + per_chunk]
        tokens_KBTD = prefix.tokens_BTD.expand(len(chunk_K1D), *prefix.tokens_BTD.shape).clone()
        # Every read token of every image gets the same direction: broadcast over images and tokens.
        tokens_KBTD[:, :, spliced.index_N] += chunk_K1D[:, None]
        final = spliced.finish(
            tokens_KBTD.flatten(0, 1), f"the lens of latents {list(latents[start : start + per_chunk])}"
        )
        logits = head.logits(final).float()
        out.append(logits.reshape(len(chunk_K1D), -1, n_classes).mean(1) - clean_C)
    return torch.cat(out).cpu() if out else torch.zeros(0, n_classes)


def logit_lens(
    spliced: SplicedVit,
    head: Head,
    x_B3HW: Float[Tensor, "batch 3 height width"],
    latents: Sequence[int],
    scales_L: Sequence[float] | Float[Tensor, " latents"],
    *,
    top: int = 3,
    max_rows: int = MAX_ROWS,
) -> list[LatentLens]:
    """Each latent's `top` promoted and suppressed classes (`logit_deltas`), in the order of `latents`."""
    if top < 1:
        raise ConfigError(f"top must be positive, got {top}.")
    deltas_LC = logit_deltas(spliced, head, x_B3HW, latents, scales_L, max_rows=max_rows)
    scales = torch.as_tensor(scales_L, dtype=torch.float32).flatten().tolist()
    lenses = []
    for latent, scale, deltas_C in zip(latents, scales, deltas_LC, strict=True):
        order = torch.argsort(deltas_C, descending=True).tolist()
        up = [(head.classes[c], float(deltas_C[c])) for c in order[:top] if deltas_C[c] > 0]
        down = [(head.classes[c], float(deltas_C[c])) for c in order[::-1][:top] if deltas_C[c] < 0]
        lenses.append(LatentLens(int(latent), float(scale), head.name, tuple(up), tuple(down)))
    return lenses

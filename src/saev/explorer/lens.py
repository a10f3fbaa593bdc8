"""The logit lens of heads on the gallery's latent pages (`saev visuals --head`, the quickstart):
what each latent's direction does to the heads' logits over a few of the store's images."""

from typing import Any

import numpy as np
import torch

from saev.data.store import open_shards
from saev.errors import ConfigError
from saev.nn import checkpoints
from saev.steering import inputs
from saev.steering.heads import open_head
from saev.steering.lens import logit_lens
from saev.visuals import VisualsConfig
from saev.visuals.build import Effects
from saev.visuals.lookup import ImageLookup

LENS_IMAGES = 16
"""Images (spread over the store) the logit lens averages each latent's effect over."""


def lens_effects(cfg: VisualsConfig, head_specs: tuple[str, ...]) -> Effects:
    """The logit lens of `head_specs` over a few of the store's images, for `make_visuals(effects=...)`;
    built before the top-k pass so a bad --head costs nothing."""
    if len(set(head_specs)) < len(head_specs):
        raise ConfigError(f"--head {' '.join(head_specs)}: a head is given twice.")
    sae = checkpoints.load(cfg.sae, device=cfg.device).eval()
    spliced, transform = inputs.spliced_model(
        sae, None, None, cfg.layer, None, force=cfg.force, device=cfg.device, where=cfg.sae
    )
    heads = [open_head(spec, spliced.vit) for spec in head_specs]
    store = open_shards(cfg.shards)
    lookup = ImageLookup(store, cfg.images)
    picked = np.unique(np.linspace(0, len(store) - 1, min(LENS_IMAGES, len(store))).round().astype(int))
    loaded = [img for img in (lookup.load(int(i)) for i in picked) if img is not None]
    if not loaded:
        raise ConfigError(
            f"--head: none of {len(picked)} images of {cfg.shards} could be read for the logit lens."
        )
    x_B3HW = torch.stack([transform(img) for img in loaded]).to(cfg.device)

    def effects(latents: list[int], scales: np.ndarray) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {s: [] for s in latents}
        for head in heads:
            for lens in logit_lens(spliced, head, x_B3HW, latents, torch.from_numpy(scales).float()):
                out[lens.latent].append(lens.to_json())
        return out

    return effects

"""Pictures of what latents respond to: heatmaps, maximally activating images, the feature gallery."""

from saev.visuals.build import VisualsConfig, VisualsResult, make_visuals
from saev.visuals.topk import LatentStats, TopActivations, top_activations

__all__ = [
    "LatentStats",
    "TopActivations",
    "VisualsConfig",
    "VisualsResult",
    "make_visuals",
    "top_activations",
]

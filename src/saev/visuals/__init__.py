"""Pictures of what latents respond to: heatmaps, maximally activating images, the feature gallery."""

from saev.visuals.build import VisualsConfig, VisualsResult, make_visuals
from saev.visuals.summary import LatentSummary, summarize
from saev.visuals.topk import LatentStats, TopActivations, top_activations

__all__ = [
    "LatentStats",
    "LatentSummary",
    "TopActivations",
    "VisualsConfig",
    "VisualsResult",
    "make_visuals",
    "summarize",
    "top_activations",
]

"""Pictures of what latents respond to: heatmaps, maximally activating images, the feature gallery."""

"""Pictures of an edit: what a head predicts on an image before and after, and where the edit
acted (drawn for `saev steer` and the quickstart's gallery)."""

import numpy as np
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from saev.steering.comparison import prediction_lines
from saev.steering.heads import Head
from saev.steering.splice import SplicedVit
from saev.visuals.heatmap import Presence, steering_panels


def edit_picture(
    head: Head,
    crop: Image.Image,
    spliced: SplicedVit,
    before: Tensor,
    after: Tensor,
    delta_N: Float[Tensor, " n"],
    shown: int | None = None,
) -> Image.Image:
    """One image's edit (`steering_panels`): `before` and `after` are the head's logits on it,
    `delta_N` the size of the edit on each token the SAE reads, `shown` the class whose presence
    is drawn (`shown_class`). The changed patches are `Head.changed`, as in the report."""
    size_P = np.zeros(spliced.vit.layout.n_patches, dtype=np.float32)
    at = (spliced.patch_N >= 0).cpu()
    size_P[spliced.patch_N.cpu()[at].numpy()] = delta_N.cpu()[at].numpy()
    grid = spliced.vit.layout.grid
    if head.kind == "image":
        return steering_panels(crop, grid, size_P, caption=prediction_lines(head, before, after))
    presence = (
        None
        if shown is None
        else Presence(
            head.classes[shown], head.probs(before)[:, shown].numpy(), head.probs(after)[:, shown].numpy()
        )
    )
    return steering_panels(
        crop,
        grid,
        size_P,
        head.top_class(before).numpy(),
        head.top_class(after).numpy(),
        class_names=head.classes,
        changed_P=head.changed(before, after).numpy(),
        presence=presence,
    )

"""Learning-rate and sparsity-coefficient schedules as plain functions of the step."""

import math

from torch import Tensor


def lr_at(step: int, base: float, warmup: int, total: int, schedule: str) -> float:
    """Linear warm-up from base/warmup to base, then constant or cosine decay to zero at `total`."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return base


def coeff_at(step: int, base: float | Tensor, warmup: int) -> float | Tensor:
    """Sparsity coefficient rising linearly from 0 to `base` over `warmup` steps (a tensor, for a
    coefficient adapted on the device, stays one)."""
    if warmup and step < warmup:
        return base * step / warmup
    return base

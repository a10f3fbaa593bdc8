"""A target L0 for the architectures whose sparsity is a penalty (relu, jumprelu, gated): their
coefficient adapts during training until the measured L0 meets the target, then is frozen.

The effect of a coefficient depends on the data (its scale, how many features a token holds), so a
fixed default suits no store; an L0 is what users mean. The controller is integral control on the
logarithm of the coefficient: every step it moves by `GAIN` times the log-ratio of the batch's L0
to the target (clipped), so a coefficient 10x off is found in about a hundred steps, whatever the
loss's scale. It adapts after the coefficient's warm-up and is frozen for the last `FROZEN` of
training, so that the weights settle under one coefficient, the one recorded with the run.
"""

import math

import torch
from torch import Tensor

GAIN = 0.02
"""Change of log(coefficient) per step at an L0 e times the target (or 1/e)."""
MAX_STEP = 0.05
"""The largest change of log(coefficient) in one step."""
LEAD = 50.0
"""Steps ahead the L0 is predicted from its trend: the weights follow a new coefficient only at the
learning rate's pace, so without this the coefficient overshoots while the L0 is still falling."""
SMOOTHING = 0.9
"""Of the L0 and its trend (an exponential moving average, about ten steps)."""
FROZEN = 0.25
"""Fraction of training, at its end, with the coefficient fixed."""
DEFAULT_TARGET_L0 = 32
"""The target of a penalised run given neither --target-l0 nor --sparsity-coeff (TopK's default k)."""


class L0Controller:
    """The sparsity coefficient of one run, adapted to reach `target` active latents per token.

    It stays on the run's device (no host sync per step); `log_coeff` is saved in checkpoints."""

    def __init__(self, target: float, start_coeff: float, adapt: range, device: str | torch.device):
        self.target = target
        self.adapt = adapt
        """Steps during which the coefficient moves."""
        self.state = torch.tensor([math.log(start_coeff), math.nan, 0.0], dtype=torch.float64, device=device)
        """log(coefficient), the smoothed log(L0) (NaN before the first step) and its smoothed trend."""

    @property
    def coeff(self) -> Tensor:
        return self.state[0].exp().float()

    def update(self, step: int, l0: Tensor) -> None:
        """After `step` (0-based) whose batch had `l0` active latents per token."""
        log_l0 = l0.detach().double().clamp_min(1e-3).log()
        level, trend = self.state[1], self.state[2]
        first = torch.isnan(level)
        new_level = torch.where(first, log_l0, SMOOTHING * level + (1 - SMOOTHING) * log_l0)
        new_trend = torch.where(first, trend, SMOOTHING * trend + (1 - SMOOTHING) * (new_level - level))
        self.state[1], self.state[2] = new_level, new_trend
        if step in self.adapt:
            error = new_level + LEAD * new_trend - math.log(self.target)
            self.state[0] += (GAIN * error).clamp(-MAX_STEP, MAX_STEP)


def adapting_steps(n_steps: int, warmup: int) -> range:
    """The steps during which the coefficient adapts: after its warm-up, before the frozen end."""
    return range(warmup, max(warmup, math.ceil((1 - FROZEN) * n_steps)))

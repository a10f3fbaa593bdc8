"""A target L0 for the architectures whose sparsity is a penalty (relu, jumprelu, gated): their
coefficient adapts during training until the measured L0 meets the target, then is frozen.

The effect of a coefficient depends on the data (its scale, how many features a token holds), so a
fixed default suits no store; an L0 is what users mean. Three things make the target reachable
within a short run:

- the start (`firing_thresholds`): the encoder's biases move so that on the first batch each latent
  fires on an equal share of the tokens, `target` per token in all. From the usual zero biases half
  the latents fire on every token, and Adam moves a bias by about the learning rate per step, so a
  penalty alone takes most of a run of a thousand steps to make the codes sparse (on the
  ground-truth dictionary of the tests, ReLU at L0 300 recovers no atom after 3M tokens);
- the learning rate: by default `TARGET_LR_FACTOR` times the usual default (for every
  architecture), and JumpReLU's thresholds `FAST_LR_FACTOR` times that
  (`Architecture.fast_parameters`);
- the controller (`L0Controller`): integral control on the logarithm of the coefficient, every step
  moving it by `GAIN` times the log-ratio of the batch's L0 (predicted `LEAD` steps ahead) to the
  target, so a coefficient 10x off is found in about a hundred steps, whatever the loss's scale. It
  adapts after the coefficient's warm-up and is frozen for the last `FROZEN` of training, so that the
  weights settle under one coefficient, the one recorded with the run.
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
RANGE = 1e4
"""The coefficient stays within this factor of its start: when the L0 cannot follow (every latent
dead, or none able to stop), the controller would otherwise wind the coefficient up without end."""
TARGET_LR_FACTOR = 4.0
"""The default learning rate of a run with a target L0, of any architecture, as a multiple of the
default without one (`TrainConfig.learning_rate`, sparsify's rule, unchanged so that runs given a
`--k` or `--sparsity-coeff` keep their weights). On the ground-truth dictionary at a target of 5
(3M tokens) it recovers more atoms for every architecture: Matryoshka TopK 89% -> 96%, TopK 97% ->
100%, BatchTopK 95% -> 99.6%, Gated 41% -> 98%; at the lower rate ReLU also ends at L0 4.4
(BENCHMARKS.md)."""
FAST_LR_FACTOR = 10.0
"""Of the parameters named by `Architecture.fast_parameters`, over the run's learning rate."""
DEFAULT_TARGET_L0 = 32
"""The target of a penalised run given neither --target-l0 nor --sparsity-coeff (TopK's default k)."""


class L0Controller:
    """The sparsity coefficient of one run, adapted to reach `target` active latents per token.

    It stays on the run's device (no host sync per step); its `state` is saved in checkpoints."""

    def __init__(self, target: float, start_coeff: float, adapt: range, device: str | torch.device):
        self.target = target
        self.bounds = (math.log(start_coeff / RANGE), math.log(start_coeff * RANGE))
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
            self.state[0] = (self.state[0] + (GAIN * error).clamp(-MAX_STEP, MAX_STEP)).clamp(*self.bounds)

    def load(self, state: Tensor) -> None:
        """The state saved with a checkpoint (`state`)."""
        self.state.copy_(state)


def adapting_steps(n_steps: int, warmup: int) -> range:
    """The steps during which the coefficient adapts: after its warm-up, before the frozen end."""
    return range(warmup, max(warmup, math.ceil((1 - FROZEN) * n_steps)))


def firing_thresholds(pre_BS: Tensor, target: float) -> Tensor:
    """Per latent, the pre-activation exceeded on a share `target / d_sae` of the batch's tokens."""
    n, d_sae = pre_BS.shape
    above = min(n - 1, max(1, round(n * target / d_sae)))
    return pre_BS.float().kthvalue(n - above, dim=0).values

"""Activation functions that turn SAE pre-activations into sparse codes.

Every module maps pre-activations [..., d_sae] to codes of the same shape. Modules whose
inference rule differs from their training rule (BatchTopK, JumpReLU) switch on `self.training`.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from saev.nn import config


class ReluActivation(torch.nn.Module):
    def forward(self, pre_BS: Tensor) -> Tensor:
        # In place: pre-activations are a fresh intermediate, and this saves a [tokens, d_sae] buffer.
        return F.relu(pre_BS, inplace=not pre_BS.is_leaf)


class TopKActivation(torch.nn.Module):
    """Per-token top-k. `relu=False` reproduces the reference V2 TopK, whose codes can be negative."""

    def __init__(self, k: int, relu: bool = True):
        super().__init__()
        self.k = k
        self.relu = relu

    def forward(self, pre_BS: Tensor) -> Tensor:
        vals_BK, idx_BK = pre_BS.topk(self.k, dim=-1, sorted=False)
        if self.relu:
            vals_BK = F.relu(vals_BK)
        return torch.zeros_like(pre_BS).scatter_(-1, idx_BK, vals_BK)


class BatchTopKActivation(torch.nn.Module):
    """Top (n_tokens * k) over a whole training batch; a learned threshold at inference.

    The threshold is a running mean of the smallest value kept in each training batch
    (Bussmann et al., 2024), so inference codes depend only on the token itself.
    """

    def __init__(self, k: int, momentum: float = 0.01):
        super().__init__()
        self.k = k
        self.momentum = momentum
        self.register_buffer("threshold", torch.tensor(-1.0))
        """Negative until the first training batch sets it."""

    def forward(self, pre_BS: Tensor) -> Tensor:
        pre_BS = F.relu(pre_BS)
        if not self.training:
            if self.threshold < 0:
                raise RuntimeError("BatchTopK threshold was never set: train the SAE before encoding.")
            return pre_BS * (pre_BS > self.threshold)
        idx = self.select(pre_BS)
        flat = pre_BS.reshape(-1)
        return torch.zeros_like(flat).scatter_(0, idx, flat[idx]).reshape(pre_BS.shape)

    @torch.no_grad()
    def select(self, pre_BS: Tensor) -> Tensor:
        """Flat indices of the n_tokens * k largest positive pre-activations; updates the threshold."""
        flat = pre_BS.reshape(-1)
        n_keep = min(self.k * (flat.numel() // pre_BS.shape[-1]), flat.numel())
        vals, idx = flat.topk(n_keep, sorted=False)
        positive = vals > 0
        if positive.any():
            batch_min = vals[positive].min().to(self.threshold.dtype)  # bfloat16 under autocast
            if self.threshold < 0:
                self.threshold.copy_(batch_min)
            else:
                self.threshold.lerp_(batch_min, self.momentum)
        return idx[positive]


class _JumpReluFn(torch.autograd.Function):
    """Forward `pre * (pre > theta)`; the threshold's gradient uses a rectangle-kernel estimate."""

    @staticmethod
    def forward(ctx, pre_BS: Tensor, theta_S: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre_BS, theta_S)
        ctx.bandwidth = bandwidth
        return pre_BS * (pre_BS > theta_S)

    @staticmethod
    def backward(ctx, grad_BS: Tensor):
        pre_BS, theta_S = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad_BS * (pre_BS > theta_S)
        near = ((pre_BS - theta_S).abs() < eps / 2).to(pre_BS.dtype)
        grad_theta = -(theta_S / eps) * near * grad_BS
        grad_theta = grad_theta.reshape(-1, theta_S.shape[-1]).sum(0)
        return grad_pre, grad_theta, None


class JumpReluActivation(torch.nn.Module):
    def __init__(self, d_sae: int, init_threshold: float, bandwidth: float):
        super().__init__()
        self.bandwidth = bandwidth
        self.log_threshold = torch.nn.Parameter(torch.full((d_sae,), float(init_threshold)).log())

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def forward(self, pre_BS: Tensor) -> Tensor:
        pre_BS = F.relu(pre_BS)
        if not self.training:
            return pre_BS * (pre_BS > self.threshold)
        return _JumpReluFn.apply(pre_BS, self.threshold, self.bandwidth)


def make_activation(cfg: config.SaeConfig) -> torch.nn.Module:
    act = cfg.activation
    if isinstance(act, config.Relu):
        return ReluActivation()
    if isinstance(act, config.TopK):
        return TopKActivation(act.k, relu=act.relu)
    if isinstance(act, config.BatchTopK):
        return BatchTopKActivation(act.k)
    if isinstance(act, config.JumpRelu):
        return JumpReluActivation(cfg.d_sae, act.init_threshold, act.bandwidth)
    raise TypeError(f"unknown activation config {act!r}")

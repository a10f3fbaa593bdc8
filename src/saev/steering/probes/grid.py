"""A grid of learning rates x weight decays trained in one pass over the features: the G heads'
weights are one [G, D, C] tensor, every mini-batch steps all of them (AdamW, cross-entropy, on
standardised features), and each head's standardisation is folded into its weight and bias so
that it reads raw `Vit.features` output."""

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

# Rows of features scored at once when evaluating every head on a split.
_EVAL_CHUNK = 16384


@dataclasses.dataclass(frozen=True)
class GridFit:
    weight_GDC: Float[Tensor, "heads d_vit classes"]
    """Weights on raw features (standardisation folded in)."""
    bias_GC: Float[Tensor, "heads classes"]
    scores: list[dict[str, Any]]
    """Per head: lr, weight_decay, train_accuracy, val_accuracy, val_loss."""


def adamw_step(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    lr_G: Float[Tensor, " heads"],
    wd_G: Float[Tensor, " heads"],
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One AdamW update (torch.optim.AdamW's formula) of G stacked heads, each with its own lr and
    weight decay along the first axis; in place."""
    b1, b2 = betas
    shape = (-1,) + (1,) * (param.ndim - 1)
    lr, wd = lr_G.view(shape), wd_G.view(shape)
    param.mul_(1 - lr * wd)
    exp_avg.lerp_(grad, 1 - b1)
    exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - b2**step)).add_(eps)
    param.sub_(lr / (1 - b1**step) * exp_avg / denom)


def _logits(
    x_ND: Float[Tensor, "n d_vit"], weight_GDC: Tensor, bias_GC: Tensor
) -> Float[Tensor, "heads n classes"]:
    return torch.einsum("nd,gdc->gnc", x_ND, weight_GDC) + bias_GC[:, None]


def _evaluate(
    x_ND: Float[Tensor, "n d_vit"],
    y_N: Int[Tensor, " n"],
    weight_GDC: Tensor,
    bias_GC: Tensor,
) -> tuple[Tensor, Tensor]:
    """Per head: accuracy [G] and mean cross-entropy [G]."""
    n_heads = weight_GDC.shape[0]
    correct = torch.zeros(n_heads, device=x_ND.device)
    loss = torch.zeros(n_heads, device=x_ND.device)
    with torch.inference_mode():
        for start in range(0, len(y_N), _EVAL_CHUNK):
            x, y = x_ND[start : start + _EVAL_CHUNK], y_N[start : start + _EVAL_CHUNK]
            logits_GNC = _logits(x, weight_GDC, bias_GC)
            pred_GN = logits_GNC.argmax(-1)
            correct += (pred_GN == y).sum(1)
            ce_GN = F.cross_entropy(logits_GNC.transpose(1, 2), y.expand(n_heads, -1), reduction="none")
            loss += ce_GN.sum(1)
    n = max(len(y_N), 1)
    return correct / n, loss / n


def train_grid(
    x_train_ND: Float[Tensor, "n_train d_vit"],
    y_train_N: Int[Tensor, " n_train"],
    x_val_ND: Float[Tensor, "n_val d_vit"],
    y_val_N: Int[Tensor, " n_val"],
    n_classes: int,
    lrs: tuple[float, ...],
    weight_decays: tuple[float, ...],
    epochs: int,
    batch_size: int,
    seed: int,
) -> GridFit:
    """Every (lr, weight decay) head trained together in one pass over the examples: AdamW on
    cross-entropy over standardised features, zero-initialised, the same seeded mini-batches for all."""
    device = x_train_ND.device
    mean_D = x_train_ND.mean(0)
    std_D = x_train_ND.std(0, correction=0).clamp_min(1e-6)
    xs_train = (x_train_ND - mean_D) / std_D
    settings = [(lr, wd) for lr in lrs for wd in weight_decays]
    n_heads, d = len(settings), x_train_ND.shape[1]
    lr_G = torch.tensor([s[0] for s in settings], dtype=torch.float32, device=device)
    wd_G = torch.tensor([s[1] for s in settings], dtype=torch.float32, device=device)
    weight_GDC = torch.zeros(n_heads, d, n_classes, device=device, requires_grad=True)
    bias_GC = torch.zeros(n_heads, n_classes, device=device, requires_grad=True)
    state = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for p in (weight_GDC, bias_GC)}
    zero_G = torch.zeros_like(wd_G)
    generator = torch.Generator().manual_seed(seed)
    n, step = len(y_train_N), 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            logits_GBC = _logits(xs_train[idx], weight_GDC, bias_GC)
            y_B = y_train_N[idx]
            # Summed over heads: each head's gradient is that of its own mean loss.
            loss = F.cross_entropy(logits_GBC.transpose(1, 2), y_B.expand(n_heads, -1), reduction="none")
            weight_GDC.grad = bias_GC.grad = None
            loss.mean(1).sum().backward()
            step += 1
            with torch.no_grad():
                for param, wd in ((weight_GDC, wd_G), (bias_GC, zero_G)):
                    assert param.grad is not None  # set by backward() above
                    adamw_step(param, param.grad, *state[id(param)], step, lr_G, wd)
    with torch.no_grad():
        # Fold the standardisation in: ((x - mean) / std) W + b = x (W / std) + (b - (mean / std) W).
        raw_weight = weight_GDC.detach() / std_D[None, :, None]
        raw_bias = bias_GC.detach() - torch.einsum("d,gdc->gc", mean_D, raw_weight)
    train_acc, _ = _evaluate(x_train_ND, y_train_N, raw_weight, raw_bias)
    val_acc, val_loss = _evaluate(x_val_ND, y_val_N, raw_weight, raw_bias)
    scores = [
        {
            "lr": lr,
            "weight_decay": wd,
            "train_accuracy": float(train_acc[g]),
            "val_accuracy": float(val_acc[g]),
            "val_loss": float(val_loss[g]),
        }
        for g, (lr, wd) in enumerate(settings)
    ]
    return GridFit(raw_weight, raw_bias, scores)


def best_head(scores: list[dict[str, Any]]) -> int:
    """Highest validation accuracy; ties to the lower validation loss, then to the first tried."""
    return min(range(len(scores)), key=lambda g: (-scores[g]["val_accuracy"], scores[g]["val_loss"], g))

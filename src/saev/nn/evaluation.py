"""Evaluating an SAE on activations: reconstruction quality, sparsity, and every latent's firing statistics."""

import dataclasses
import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from saev import distributed
from saev.nn.modeling import SparseAutoencoder

DENSE_FREQ = 0.1
"""A latent firing on more than this fraction of tokens counts as dense."""
DEAD_DEFINITION = "dead: a latent that fires on none of the tokens counted"
DENSE_DEFINITION = f"dense: one that fires on more than {DENSE_FREQ:.0%} of them"


def dead_and_dense(freq_S: Tensor) -> tuple[Tensor, Tensor]:
    """The one definition of dead and dense latents, from each latent's firing frequency over the
    tokens counted (held-out tokens in training, a store's tokens in the gallery)."""
    return freq_S == 0, freq_S > DENSE_FREQ


@dataclasses.dataclass(frozen=True)
class EvalResult:
    n_tokens: int
    mse: float
    """Per-element MSE in the normalised training space."""
    fve: float
    """Fraction of variance explained: 1 - SSE / total squared deviation from the mean; NaN when the
    tokens have no variance (written as null in JSON)."""
    l0: float
    n_dead: int
    """Latents that never fired on the held-out tokens."""
    n_dense: int
    """Latents firing on more than 10% of held-out tokens."""
    freq: list[float]
    """Per latent: fraction of tokens where it fires."""
    mean_act: list[float]
    """Per latent: mean activation when firing (0 if never)."""

    def to_json(self) -> dict[str, Any]:
        """All fields; NaN is not JSON, so an undefined FVE is null (eval.json, report.json stay readable)."""
        return dataclasses.asdict(self) | {"fve": None if math.isnan(self.fve) else self.fve}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EvalResult":
        # eval.json also names the run's sparsity coefficient, which is not a metric.
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(
            **{k: v for k, v in data.items() if k in fields}
            | {"fve": math.nan if data["fve"] is None else data["fve"]}
        )

    def summary(self) -> dict[str, Any]:
        """The scalar metrics, and what dead and dense mean for them."""
        scalars = {k: v for k, v in self.to_json().items() if k not in ("freq", "mean_act")}
        return scalars | {
            "definitions": f"{DEAD_DEFINITION} (the {self.n_tokens:,} tokens evaluated); {DENSE_DEFINITION}"
        }


class Accumulator:
    """Running sums for one SAE over batches of normalised activations."""

    def __init__(self, sae: SparseAutoencoder):
        self.sae = sae
        s, dev = sae.cfg.d_sae, sae.b_dec.device
        self.n, self.sse, self.sum_sq, self.l0 = 0, 0.0, 0.0, 0.0
        self.sum_x = torch.zeros(sae.cfg.d_vit, dtype=torch.float64, device=dev)
        self.fires = torch.zeros(s, dtype=torch.float64, device=dev)
        self.acts = torch.zeros(s, dtype=torch.float64, device=dev)

    @torch.inference_mode()
    def add(self, x_n: Float[Tensor, "batch d_vit"]) -> None:
        f = self.sae.encode_normalized(x_n)
        x_hat = self.sae.decode_normalized(f)
        active = f > 0
        self.n += len(x_n)
        self.sse += float((x_hat - x_n).double().pow(2).sum())
        self.sum_sq += float(x_n.double().pow(2).sum())
        self.sum_x += x_n.double().sum(0)
        self.l0 += float(active.sum())
        self.fires += active.sum(0).double()
        self.acts += f.sum(0).double()

    def reduce(self) -> None:
        """Add up every rank's running sums (under torchrun each evaluated a share of the tokens)."""
        if not distributed.current().distributed:
            return
        dev = self.sum_x.device
        scalars = torch.tensor([self.n, self.sse, self.sum_sq, self.l0], dtype=torch.float64, device=dev)
        distributed.all_reduce(scalars)
        self.n, self.sse, self.sum_sq, self.l0 = int(scalars[0]), *scalars[1:].tolist()
        for sums in (self.sum_x, self.fires, self.acts):
            distributed.all_reduce(sums)

    def result(self) -> EvalResult:
        n, d = max(self.n, 1), self.sae.cfg.d_vit
        sst = self.sum_sq - float(self.sum_x.pow(2).sum()) / n
        freq = self.fires / n
        mean_act = torch.where(self.fires > 0, self.acts / self.fires.clamp_min(1), 0.0)
        return EvalResult(
            n_tokens=self.n,
            mse=self.sse / (n * d),
            fve=1 - self.sse / sst if sst > 0 else float("nan"),
            l0=self.l0 / n,
            n_dead=int(dead_and_dense(freq)[0].sum()),
            n_dense=int(dead_and_dense(freq)[1].sum()),
            freq=freq.float().tolist(),
            mean_act=mean_act.float().tolist(),
        )

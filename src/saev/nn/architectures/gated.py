"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders").

A gate path decides which latents fire and a magnitude path how strongly, both reading the same
encoder directions: with `pi_gate = x W_gate + b_gate` and `pi_mag = x (exp(r_mag) * W_gate) + b_mag`,
codes are `1[pi_gate > 0] * ReLU(pi_mag)`. The SAE's `W_enc` and `b_enc` are `W_gate` and `b_gate`;
`r_mag` and `b_mag` are this architecture's own weights.

Training adds to the reconstruction error an L1 penalty on `ReLU(pi_gate)` (weighted by the decoder
row norms) and an auxiliary loss: `ReLU(pi_gate)` decoded by a frozen copy of the decoder must
reconstruct the input too. The Heaviside gate passes no gradient, so the gate learns only from
those two terms, as in the paper. The penalty is per token and the errors per element (the
reference's ReLU convention), so `sparsity_coeff` is the paper's lambda divided by d_vit.
"""

import dataclasses
import typing

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from saev.nn.architectures.base import (
    Architecture,
    Autoencoder,
    Codes,
    CoeffOption,
    Inputs,
    Penalty,
)


@dataclasses.dataclass(frozen=True)
class Gated:
    """Gated codes `1[pi_gate > 0] * ReLU(pi_mag)`, the magnitude path a per-latent rescaling of the gate's directions."""


class GatedActivation(torch.nn.Module):
    def __init__(self, d_sae: int):
        super().__init__()
        self.r_mag = torch.nn.Parameter(torch.zeros(d_sae))
        """Log of each latent's magnitude-path scale (W_mag = exp(r_mag) * W_gate)."""
        self.b_mag = torch.nn.Parameter(torch.zeros(d_sae))

    def forward(
        self, pi_gate_BS: Float[Tensor, "*batch d_sae"], b_gate_S: Float[Tensor, " d_sae"]
    ) -> Float[Tensor, "*batch d_sae"]:
        pi_mag_BS = (pi_gate_BS - b_gate_S) * self.r_mag.exp() + self.b_mag
        return (pi_gate_BS > 0) * F.relu(pi_mag_BS)


class GatedArchitecture(Architecture):
    name = "gated"
    config = Gated
    options = CoeffOption
    default_coeff = 0.15

    def build(self, opts: CoeffOption) -> Gated:
        return Gated()

    def module(self, act_cfg: Gated, d_sae: int) -> torch.nn.Module:
        return GatedActivation(d_sae)

    def encode(
        self, sae: Autoencoder, pre_BS: Float[Tensor, "*batch d_sae"]
    ) -> Float[Tensor, "*batch d_sae"]:
        return sae.activation(pre_BS, sae.b_enc)

    def penalty(
        self, sae: Autoencoder, x_BD: Inputs, pre_BS: Codes, f_BS: Codes, coeff: float | Tensor
    ) -> Penalty:
        gate_BS = F.relu(pre_BS)
        sparsity = coeff * (gate_BS * sae.W_dec.norm(dim=1)).sum(-1).mean()
        frozen_recon_BD = gate_BS @ sae.W_dec.detach() + sae.b_dec.detach()
        return Penalty(sparsity, F.mse_loss(frozen_recon_BD, x_BD))

    def start_at(self, sae: Autoencoder, threshold_S: Tensor) -> None:
        # Both paths move, so that the SAE starts as the ReLU SAE with the same start: codes
        # ReLU(pi - threshold). Moving the gate alone starts from unshrunk codes, and at a target
        # L0 of 5 on the ground-truth dictionary that loses a quarter of the atoms.
        act = typing.cast(GatedActivation, sae.activation)
        with torch.no_grad():
            sae.b_enc.sub_(threshold_S)
            act.b_mag.sub_(threshold_S)


ARCHITECTURE = GatedArchitecture()

"""ReLU codes made sparse by an L1 penalty: the reference objective."""

import dataclasses

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
class Relu:
    """ReLU codes, made sparse by an L1 penalty during training (the reference objective)."""


class ReluActivation(torch.nn.Module):
    def forward(self, pre_BS: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        # In place: pre-activations are a fresh intermediate, and this saves a [tokens, d_sae] buffer.
        return F.relu(pre_BS, inplace=not pre_BS.is_leaf)


class ReluArchitecture(Architecture):
    name = "relu"
    config = Relu
    options = CoeffOption
    default_coeff = 0.05

    def build(self, opts: CoeffOption) -> Relu:
        return Relu()

    def module(self, act_cfg: Relu, d_sae: int) -> torch.nn.Module:
        return ReluActivation()

    def penalty(
        self, sae: Autoencoder, x_BD: Inputs, pre_BS: Codes, f_BS: Codes, coeff: float | Tensor
    ) -> Penalty:
        return Penalty(coeff * f_BS.sum(-1).mean(), torch.zeros((), device=x_BD.device))

    def start_at(self, sae: Autoencoder, threshold_S: Tensor) -> None:
        with torch.no_grad():
            sae.b_enc.sub_(threshold_S)


ARCHITECTURE = ReluArchitecture()

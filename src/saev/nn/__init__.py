"""Sparse autoencoder models, their architectures (`saev.nn.architectures`) and checkpoint I/O."""

from saev.nn.architectures import ARCHITECTURES, Architecture
from saev.nn.architectures.batchtopk import BatchTopK
from saev.nn.architectures.jumprelu import JumpRelu
from saev.nn.architectures.relu import Relu
from saev.nn.architectures.topk import TopK
from saev.nn.checkpoints import dump, load
from saev.nn.config import Provenance, SaeConfig
from saev.nn.modeling import Loss, Output, SparseAutoencoder
from saev.normalization import ActNorm, estimate_normalization

__all__ = [
    "ARCHITECTURES",
    "ActNorm",
    "Architecture",
    "BatchTopK",
    "JumpRelu",
    "Loss",
    "Output",
    "Provenance",
    "Relu",
    "SaeConfig",
    "SparseAutoencoder",
    "TopK",
    "dump",
    "estimate_normalization",
    "load",
]

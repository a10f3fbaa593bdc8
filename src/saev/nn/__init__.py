"""Sparse autoencoder models and checkpoint I/O."""

from saev.nn.checkpoints import dump, load
from saev.nn.config import BatchTopK, JumpRelu, Provenance, Relu, SaeConfig, TopK
from saev.nn.modeling import ActNorm, Loss, Output, SparseAutoencoder, estimate_normalization

__all__ = [
    "ActNorm",
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

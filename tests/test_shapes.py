"""The test suite runs saev under jaxtyping's import hook with beartype (see conftest.py): shape
annotations are checked on every call, so a mismatch fails at the call with the dimension named."""

import jaxtyping
import pytest
import torch

import saev.nn
from saev.normalization import ActNorm, normalize


def test_a_dimension_mismatch_is_caught_at_the_call():
    with pytest.raises(jaxtyping.TypeCheckError, match="d_vit"):
        normalize(torch.zeros(2, 16), torch.zeros(8), 1.0, 1e5)


def test_dataclass_fields_are_checked_too():
    with pytest.raises(jaxtyping.TypeCheckError):
        ActNorm(torch.zeros(4, 4), 1.0)  # mean must be one vector


def test_dtypes_are_checked():
    sae = saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=8, d_sae=16))
    with pytest.raises(jaxtyping.TypeCheckError):
        sae.encode(torch.zeros(3, 8, dtype=torch.int64))
    assert sae.encode(torch.zeros(3, 8)).shape == (3, 16)

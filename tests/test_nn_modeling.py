"""SparseAutoencoder forward, encode/decode, loss terms and normalisation."""

import math

import numpy as np
import pytest
import torch

import saev.nn
from saev.nn import ActNorm, SaeConfig, SparseAutoencoder


def plain_forward(x, W_enc, b_enc, W_dec, b_dec, subtract_b_dec=True):
    """The reference math, written out."""
    pre = (x - b_dec if subtract_b_dec else x) @ W_enc + b_enc
    f = torch.relu(pre)
    return f @ W_dec + b_dec, f


def make_sae(d_vit=16, d_sae=64, seed=0, **kw):
    sae = SparseAutoencoder(SaeConfig(d_vit=d_vit, d_sae=d_sae, seed=seed, **kw))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(d_vit, generator=g))
    return sae


@pytest.mark.parametrize("subtract", [True, False])
def test_forward_matches_plain_math_on_any_leading_shape(subtract):
    sae = make_sae(subtract_b_dec=subtract)
    x = torch.randn(2, 5, 16)
    x_hat, f_x, loss = sae(x)
    ref_hat, ref_f = plain_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, subtract)
    torch.testing.assert_close(f_x, ref_f)
    torch.testing.assert_close(x_hat, ref_hat)
    assert f_x.shape == (2, 5, 64)
    torch.testing.assert_close(sae.encode(x), ref_f)
    torch.testing.assert_close(sae.decode(ref_f), ref_hat)
    # Flattening the leading axes changes nothing.
    torch.testing.assert_close(sae(x.reshape(10, 16)).f_x, f_x.reshape(10, 64))


def test_loss_terms_have_the_reference_definitions():
    sae = make_sae(sparsity_coeff=0.01)
    x = torch.randn(7, 16)
    x_hat, f_x, loss = sae(x)
    assert loss.mse.item() == pytest.approx(((x_hat - x) ** 2).mean().item(), rel=1e-5)
    assert loss.l0.item() == pytest.approx((f_x > 0).float().sum(1).mean().item())
    assert loss.l1.item() == pytest.approx(f_x.sum(1).mean().item(), rel=1e-5)
    assert loss.sparsity.item() == pytest.approx(0.01 * loss.l1.item(), rel=1e-5)
    assert loss.loss.item() == pytest.approx(loss.mse.item() + loss.sparsity.item(), rel=1e-5)
    loss.loss.backward()
    assert sae.W_enc.grad is not None and sae.W_enc.grad.abs().sum() > 0


def test_normalisation_is_applied_inside_the_sae():
    sae = make_sae()
    mean, scale = torch.randn(16), 3.5
    sae.set_normalization(ActNorm(mean, scale))
    x = torch.randn(4, 16) * 10
    x_n = (x.clamp(-1e5, 1e5) - mean) / scale
    ref_hat_n, ref_f = plain_forward(x_n, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    x_hat, f_x, loss = sae(x)
    torch.testing.assert_close(f_x, ref_f)
    torch.testing.assert_close(x_hat, ref_hat_n * scale + mean)
    assert loss.mse.item() == pytest.approx(((ref_hat_n - x_n) ** 2).mean().item(), rel=1e-5)
    sae.set_normalization(None)
    assert sae.normalization is None


def test_estimate_normalization_is_the_reference_formula():
    x = torch.randn(1000, 32) * 4 + 7
    x[0, 0] = 1e7  # clamped to 1e5 first
    norm = saev.nn.estimate_normalization(x)
    xc = x.clamp(-1e5, 1e5).double()
    mean = xc.mean(0)
    torch.testing.assert_close(norm.mean, mean.float())
    expected = (xc - mean).norm(dim=1).mean().item() / math.sqrt(32)
    assert norm.scale == pytest.approx(expected, rel=1e-9)
    # After normalising, the average L2 norm is sqrt(d_vit).
    sae = make_sae(d_vit=32)
    sae.set_normalization(norm)
    assert sae.normalize(x).norm(dim=1).mean().item() == pytest.approx(math.sqrt(32), rel=1e-4)


def test_remove_parallel_grads_and_normalize_w_dec():
    sae = make_sae()
    x = torch.randn(8, 16)
    sae(x).loss.loss.backward()
    sae.remove_parallel_grads()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert parallel.abs().max().item() < 1e-5
    with torch.no_grad():
        sae.W_dec.mul_(3)
    sae.normalize_w_dec()
    np.testing.assert_allclose(sae.W_dec.norm(dim=1).detach().numpy(), 1.0, rtol=1e-6)


def test_topk_codes_keep_k_per_token():
    sae = make_sae(activation=saev.nn.TopK(k=5))
    f = sae.encode(torch.randn(3, 4, 16))
    assert ((f > 0).sum(-1) <= 5).all()
    assert ((f != 0).sum(-1) >= 1).all()


def test_bad_config_is_a_clear_error():
    with pytest.raises(saev.errors.ConfigError, match="k must be"):
        SaeConfig(d_vit=8, d_sae=16, activation=saev.nn.TopK(k=16))
    with pytest.raises(saev.errors.ConfigError, match="positive"):
        SaeConfig(d_vit=0, d_sae=16)

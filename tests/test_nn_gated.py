"""The gated SAE (Rajamanoharan et al. 2024): codes, loss and gradients against the paper's formulas
written out, native checkpoints, and recovery of a known dictionary by `saev train --arch gated`."""

import pytest
import torch
import torch.nn.functional as F

import saev.nn
from saev.cli import main
from saev.errors import CheckpointError
from saev.nn.architectures.gated import Gated
from saev.nn.objectives import Objective, training_loss
from tests.ground_truth import make_dictionary_store, recovered_fraction

D, S = 12, 48
NAMES = ("W_enc", "b_enc", "W_dec", "b_dec", "activation.r_mag", "activation.b_mag")


def make(seed=0) -> saev.nn.SparseAutoencoder:
    sae = saev.nn.SparseAutoencoder(
        saev.nn.SaeConfig(d_vit=D, d_sae=S, activation=Gated(), subtract_b_dec=False)
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.add_(torch.randn(D, S, generator=g) * 0.2)
        sae.b_enc.copy_(torch.randn(S, generator=g) * 0.3)
        sae.b_dec.copy_(torch.randn(D, generator=g) * 0.1)
        sae.activation.r_mag.copy_(torch.randn(S, generator=g) * 0.5)
        sae.activation.b_mag.copy_(torch.randn(S, generator=g) * 0.3)
    return sae


def paper_codes(x, W_gate, b_gate, r_mag, b_mag):
    """Section 3 of the paper: f = 1[pi_gate > 0] * ReLU(pi_mag), W_mag = exp(r_mag) * W_gate."""
    pi_gate = x @ W_gate + b_gate
    pi_mag = x @ (W_gate * r_mag.exp()) + b_mag
    return (pi_gate > 0).float() * F.relu(pi_mag), pi_gate


def paper_loss(p, x, coeff):
    """L_recon + lambda * ||ReLU(pi_gate)|| weighted by decoder norms + L_aux with a frozen decoder."""
    f, pi_gate = paper_codes(x, p["W_enc"], p["b_enc"], p["activation.r_mag"], p["activation.b_mag"])
    recon = ((f @ p["W_dec"] + p["b_dec"] - x) ** 2).mean()
    gate = F.relu(pi_gate)
    sparsity = coeff * (gate * p["W_dec"].norm(dim=1)).sum(-1).mean()
    aux = ((gate @ p["W_dec"].detach() + p["b_dec"].detach() - x) ** 2).mean()
    return recon + sparsity + aux


def test_codes_are_the_papers():
    sae = make().eval()
    x = torch.randn(2, 5, D) * 2
    params = dict(sae.named_parameters())
    expected, _ = paper_codes(
        x, *(params[n] for n in ("W_enc", "b_enc", "activation.r_mag", "activation.b_mag"))
    )
    codes = sae.encode(x)
    torch.testing.assert_close(codes, expected, rtol=1e-5, atol=1e-6)
    assert 0 < (codes > 0).float().mean() < 1  # some latents gated off, some on
    x_hat, f_x, _ = sae(x)
    torch.testing.assert_close(x_hat, f_x @ sae.W_dec + sae.b_dec)


def test_loss_and_gradients_are_the_papers():
    sae = make(1)
    x = torch.randn(64, D) * 2
    params = {n: p.detach().clone().requires_grad_() for n, p in sae.named_parameters()}
    expected = paper_loss(params, x, 0.05)
    expected.backward()
    out = training_loss(sae, x, 0.05, None, Objective())
    out.loss.backward()
    torch.testing.assert_close(out.loss, expected.detach(), rtol=1e-5, atol=1e-6)
    grads = dict(sae.named_parameters())
    for name in NAMES:
        torch.testing.assert_close(grads[name].grad, params[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    assert out.aux > 0 and out.sparsity > 0


def test_the_gate_learns_only_from_the_sparsity_and_auxiliary_terms():
    """The Heaviside gate passes no gradient: with no penalty and no auxiliary loss, b_gate gets none."""
    sae = make(2)
    x = torch.randn(32, D)
    f = sae.encode_normalized(x)
    F.mse_loss(sae.decode_normalized(f), x).backward()
    assert torch.count_nonzero(sae.b_enc.grad) == 0
    assert torch.count_nonzero(sae.activation.b_mag.grad) > 0 and torch.count_nonzero(sae.W_enc.grad) > 0


def test_native_checkpoints_round_trip_exactly(tmp_path):
    sae = make(3)
    saev.nn.dump(tmp_path / "g.safetensors", sae)
    back = saev.nn.load(tmp_path / "g.safetensors")
    assert back.cfg == sae.cfg and isinstance(back.cfg.activation, Gated)
    for (name, a), b in zip(sae.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    x = torch.randn(7, D)
    torch.testing.assert_close(back.eval().encode(x), sae.eval().encode(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="reference .pt format cannot express Gated"):
        saev.nn.dump(tmp_path / "g.pt", sae)


@pytest.mark.slow
def test_saev_train_gated_recovers_a_known_dictionary(tmp_path, capsys):
    truth = make_dictionary_store(tmp_path / "truth", n_atoms=128, d=32, n_tokens=60_000)
    args = ["train", "--shards", str(truth.store), "--out", str(tmp_path / "runs"), "--layer", "0"]
    args += ["--arch", "gated", "--exp-factor", "8", "--sparsity-coeff", "0.15", "--sparsity-warmup", "200"]
    args += ["--n-train", "3000000", "--batch-size", "1024", "--lr", "3e-3", "--lr-warmup", "50"]
    main(args)
    [path] = capsys.readouterr().out.strip().splitlines()
    assert "/gated-x8-c0.15-lr0.003-" in path
    sae = saev.nn.load(path)
    assert isinstance(sae.cfg.activation, Gated)
    assert recovered_fraction(truth.atoms_AD, sae.W_dec) >= 0.9

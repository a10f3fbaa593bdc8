"""Training losses: the sparse TopK path and the dense path give the plain formula's values and gradients."""

import pytest
import torch
import torch.nn.functional as F

import saev.nn
from saev.nn import SaeConfig, SparseAutoencoder, sparse
from saev.nn.objectives import Objective, training_loss

D, S = 24, 192


def make(activation, subtract=False, seed=0):
    sae = SparseAutoencoder(
        SaeConfig(d_vit=D, d_sae=S, activation=activation, subtract_b_dec=subtract, seed=seed)
    )
    g = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        sae.W_enc.add_(torch.randn(D, S, generator=g) * 0.1)
        sae.b_enc.copy_(torch.randn(S, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(D, generator=g) * 0.2)
    return sae


def plain_topk_loss(p, x, k, subtract, prefixes, dead, aux_k, aux_coeff):
    """The TopK objective written out densely with ordinary autograd."""
    x_in = x - p["b_dec"] if subtract else x
    pre = x_in @ p["W_enc"] + p["b_enc"]
    v, i = pre.topk(k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, i, F.relu(v))
    recons = [f[:, :m] @ p["W_dec"][:m] + p["b_dec"] for m in prefixes]
    loss = torch.stack([((r - x) ** 2).mean() for r in recons]).mean()
    if aux_k and dead is not None and dead.any():
        v2, i2 = pre.masked_fill(~dead, float("-inf")).topk(min(aux_k, int(dead.sum())), dim=-1)
        f2 = torch.zeros_like(pre).scatter(-1, i2, F.relu(v2))
        e = x - recons[-1].detach()
        loss = loss + aux_coeff * ((f2 @ p["W_dec"] - e) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
    return loss


def grads(sae, x, obj, dead):
    sae.zero_grad()
    out = training_loss(sae, x, 0.0, dead, obj)
    out.loss.backward()
    return out.loss.detach(), {n: getattr(sae, n).grad.clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}


@pytest.mark.parametrize("subtract", [False, True])
@pytest.mark.parametrize("prefixes", [(), (16, 64)])
@pytest.mark.parametrize("with_dead", [False, True])
def test_topk_sparse_and_dense_match_the_plain_formula(subtract, prefixes, with_dead):
    sae = make(saev.nn.TopK(k=5), subtract)
    x = torch.randn(40, D) * 2
    dead = (torch.arange(S) % 3 == 0) if with_dead else None
    aux_k = 6 if with_dead else 0
    params = {
        n: getattr(sae, n).detach().clone().requires_grad_() for n in ("W_enc", "b_enc", "W_dec", "b_dec")
    }
    ref = plain_topk_loss(params, x, 5, subtract, list(prefixes) + [S], dead, aux_k, 1 / 32)
    ref.backward()
    for decoder in ("sparse", "dense"):
        loss, g = grads(sae, x, Objective(matryoshka_prefixes=prefixes, aux_k=aux_k, decoder=decoder), dead)
        torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-6)
        for name, grad in g.items():
            torch.testing.assert_close(grad, params[name].grad, rtol=1e-4, atol=1e-6, msg=f"{decoder} {name}")


def test_batchtopk_sparse_and_dense_agree_and_learn_a_threshold():
    x = torch.randn(50, D) * 2
    results = {}
    for decoder in ("sparse", "dense"):
        sae = make(saev.nn.BatchTopK(k=4))
        loss, g = grads(sae, x, Objective(decoder=decoder), None)
        results[decoder] = (loss, g, float(sae.activation.threshold))
    (ls, gs, ts), (ld, gd, td) = results["sparse"], results["dense"]
    torch.testing.assert_close(ls, ld, rtol=1e-5, atol=1e-6)
    for name in gs:
        torch.testing.assert_close(gs[name], gd[name], rtol=1e-4, atol=1e-6)
    assert ts == td > 0
    sae = make(saev.nn.BatchTopK(k=4))
    out = training_loss(sae, x, 0.0, None, Objective())
    assert out.l0.item() == pytest.approx(4, abs=0.05)  # n_tokens * k codes over the batch
    # At inference the learned threshold decides, so a token's codes do not depend on its batch.
    sae.eval()
    alone = sae.encode(x[:1])
    together = sae.encode(x)[:1]
    torch.testing.assert_close(alone, together)


def test_batchtopk_threshold_keeps_up_with_shrinking_activations():
    # Early in a run the pre-activations shrink fast; the inference threshold must follow them
    # within a few dozen steps, or a short run encodes with L0 far below k.
    act = saev.nn.architectures.batchtopk.BatchTopKActivation(k=4).train()
    pre = torch.rand(256, S, generator=torch.Generator().manual_seed(0))
    for step in range(60):
        act.select(pre * (2.0 - step / 60))
    last = float((pre * (2.0 - 59 / 60)).flatten().topk(4 * 256).values.min())
    assert float(act.threshold) == pytest.approx(last, rel=0.05)


def test_relu_l1_objective_is_the_reference_one():
    sae = make(saev.nn.Relu())
    x = torch.randn(30, D)
    out = training_loss(sae, x, 0.01, None, Objective())
    f = torch.relu(x @ sae.W_enc + sae.b_enc)
    x_hat = f @ sae.W_dec + sae.b_dec
    assert out.mse.item() == pytest.approx(((x_hat - x) ** 2).mean().item(), rel=1e-5)
    assert out.sparsity.item() == pytest.approx(0.01 * f.sum(1).mean().item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(out.mse.item() + out.sparsity.item(), rel=1e-5)


def test_jumprelu_l0_gradient_reaches_the_thresholds():
    sae = make(saev.nn.JumpRelu(init_threshold=0.05, bandwidth=0.5))
    x = torch.randn(64, D)
    out = training_loss(sae, x, 0.1, None, Objective())
    out.loss.backward()
    grad = sae.activation.log_threshold.grad
    assert grad is not None and grad.abs().sum() > 0
    # Raising thresholds lowers L0, so the L0 term pushes them up (negative gradient) where it acts.
    sae.zero_grad()
    pre = x @ sae.W_enc + sae.b_enc
    from saev.nn.architectures.jumprelu import step as _step

    l0 = _step(pre, sae.activation.threshold, 0.5).sum(-1).mean()
    l0.backward()
    assert (sae.activation.log_threshold.grad <= 0).all() and (sae.activation.log_threshold.grad < 0).any()


@pytest.mark.parametrize("decoder", ["sparse", "dense"])
def test_batchtopk_warm_up_selects_per_token_like_topk(decoder):
    x = torch.randn(40, D) * 2
    batch, topk = make(saev.nn.BatchTopK(k=5)), make(saev.nn.TopK(k=5))
    warm = training_loss(batch, x, 0.0, None, Objective(decoder=decoder), per_token=True)
    plain = training_loss(topk, x, 0.0, None, Objective(decoder=decoder))
    torch.testing.assert_close(warm.loss, plain.loss)
    assert float(batch.activation.threshold) == -1.0  # the threshold is learned only from batch selection


@pytest.mark.parametrize(
    "activation, decoder",
    [
        (saev.nn.TopK(k=8), "sparse"),
        (saev.nn.TopK(k=8), "dense"),
        (saev.nn.BatchTopK(k=8), "sparse"),
        (saev.nn.Relu(), "auto"),
        (saev.nn.JumpRelu(init_threshold=0.05), "auto"),
    ],
)
def test_bf16_autocast_stays_close_to_float32(activation, decoder):
    """Mixed precision changes products, not the objective: loss and gradients stay near float32."""
    sae = make(activation)
    x = torch.randn(256, D) * 2
    obj = Objective(aux_k=6, decoder=decoder)
    dead = torch.arange(S) % 4 == 0
    loss32, g32 = grads(sae, x, obj, dead)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, g16 = grads(sae, x, obj, dead)
    assert loss16.dtype == torch.float32
    assert loss16.item() == pytest.approx(loss32.item(), rel=2e-2)
    assert loss16.item() != loss32.item()  # the products really ran in bfloat16
    for name in g32:
        assert g16[name].dtype == torch.float32
        cos = F.cosine_similarity(g16[name].flatten(), g32[name].flatten(), dim=0)
        assert cos > 0.98, f"{name}: cosine {cos:.4f}"


def _as_set(idx: torch.Tensor) -> list[int]:
    return sorted(idx.tolist())


@pytest.mark.parametrize("n, m", [(64 * 16 * 33, 32), (160_000, 1000), (1000, 10), (4096 * 3 + 5, 20)])
def test_top_set_is_the_set_topk_returns(n, m):
    """The candidate search returns exactly topk's set, whether it answers itself or falls back."""
    gen = torch.Generator().manual_seed(n)
    flat = torch.randn(n, generator=gen)
    vals, idx = sparse.top_set(flat, m)
    ref_vals, ref_idx = flat.topk(m, sorted=False)
    assert _as_set(idx) == _as_set(ref_idx)
    assert torch.equal(vals.sort().values, ref_vals.sort().values)
    assert torch.equal(flat[idx], vals)


def test_top_set_leaves_ties_and_nan_to_topk():
    """A tie at the m-th value (torch's pick among equals) or a NaN: the answer is topk's own."""
    flat = torch.randn(64 * 16 * 10)
    m = 100
    top = flat.topk(m + 1).values
    flat[flat == top[-1]] = top[-2]  # the m-th and (m + 1)-th largest now tie
    assert _as_set(sparse.top_set(flat, m)[1]) == _as_set(flat.topk(m, sorted=False).indices)
    flat[7] = float("nan")
    assert _as_set(sparse.top_set(flat, m)[1]) == _as_set(flat.topk(m, sorted=False).indices)

"""Related latents (decoder neighbours, co-occurrence) block by block equal the brute force over the
whole d_sae x d_sae matrix; the image histogram's percentiles and deciles."""

import numpy as np
import pytest
import torch

from saev.visuals import relations
from saev.visuals.topk import HIST_BINS, CodeSample, _bins, hist_percentile, hist_quantile


@pytest.mark.parametrize("block", [1, 3, 256])
def test_neighbours_are_the_highest_cosines_block_by_block(block, monkeypatch):
    monkeypatch.setattr(relations, "BLOCK", block)
    rng = np.random.default_rng(0)
    W = torch.from_numpy(rng.standard_normal((30, 6)).astype(np.float32))
    W[17] = W[4]  # copies: cosine 1 with latent 4, and ties for every other latent...
    W[21] = W[4]  # ...which go to the lower index
    latents = [0, 4, 9, 17, 29]
    found = relations.neighbours(W, latents)
    unit = W / W.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    for s in latents:
        expect = sorted((o for o in range(30) if o != s), key=lambda o: (-round(cos[s, o].item(), 5), o))[:5]
        assert [o for o, _ in found.of(s)] == expect
        assert [v for _, v in found.of(s)] == pytest.approx([cos[s, o].item() for o in expect], abs=1e-6)
    assert found.of(4)[:2] == [(17, pytest.approx(1.0)), (21, pytest.approx(1.0))]


@pytest.mark.parametrize("block", [2, 256])
def test_cooccurrence_is_the_conditional_firing_rate(block, monkeypatch):
    monkeypatch.setattr(relations, "BLOCK", block)
    rng = np.random.default_rng(1)
    n_tokens, d_sae = 400, 25
    fires = rng.random((n_tokens, d_sae)) < rng.uniform(0.01, 0.4, d_sae)
    fires[:, 24] = False  # never fires: nothing to list
    fires[:, 7] = fires[:, 3]  # fires exactly with latent 3: P = 1
    rows, cols = np.nonzero(fires)
    sample = CodeSample(
        1,
        torch.from_numpy(fires.sum(1).astype(np.int32)),
        torch.from_numpy(cols.astype(np.int32)),
    )
    latents = [3, 7, 11, 24]
    found = relations.cooccurrence(sample, d_sae, latents)
    for s in latents:
        n = fires[:, s].sum()
        together = (fires[fires[:, s]].sum(0) / max(n, 1)).tolist()
        expect = sorted(
            (o for o in range(d_sae) if o != s and together[o] > 0), key=lambda o: (-together[o], o)
        )[:5]
        assert [o for o, _ in found.of(s)] == expect
        assert [v for _, v in found.of(s)] == pytest.approx([together[o] for o in expect], abs=1e-6)
    assert found.of(3)[0] == (7, 1.0) and found.of(24) == []


def test_percentiles_and_deciles_from_the_image_histogram():
    rng = np.random.default_rng(2)
    values = torch.from_numpy(10 ** rng.uniform(-1, 1, 5000))
    counts = torch.bincount(_bins(values), minlength=HIST_BINS)
    exact = np.sort(values.numpy())
    for q in (0.1, 0.5, 0.9):
        # Within the bin width (a twentieth of a decade) of the exact quantile.
        assert abs(np.log10(hist_quantile(counts, q)) - np.log10(np.quantile(exact, q))) < 0.05
    for v in (0.2, 1.0, 7.0):
        assert hist_percentile(counts, v) == pytest.approx(100 * (exact < v).mean(), abs=1.5)
    assert hist_percentile(counts, 1e-3) == 0 and hist_percentile(counts, 1e3) == 100
    assert hist_quantile(torch.zeros(HIST_BINS, dtype=torch.int64), 0.5) == 0

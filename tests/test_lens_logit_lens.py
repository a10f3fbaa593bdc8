"""The logit lens (`saev.steering.lens`): a latent whose decoder direction is a concept's direction
promotes that concept's class through the rest of the built-in ViT, far more than random latents
do; the batched computation equals a plain one, latent by latent."""

import pathlib

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import saev.nn
from saev import synthetic
from saev.activations import make_img_transform, make_vit
from saev.errors import ConfigError
from saev.normalization import ActNorm
from saev.steering import SplicedVit, inputs
from saev.steering.heads import builtin_head
from saev.steering.lens import LatentLens, logit_deltas, logit_lens

N_CONCEPTS = len(synthetic.CONCEPTS)
D_SAE = 64


def concept_sae(paths: list[pathlib.Path], seed: int = 0) -> saev.nn.SparseAutoencoder:
    """An SAE for block -2 of the built-in ViT whose first latents are the concepts: latent c's
    encoder and decoder direction is the difference between the mean normalised activation of the
    patches with concept c and of those without it (measured on the synthetic images `paths`); the
    other latents are random unit directions."""
    vit, transform = make_vit("builtin", "shapes-vit"), make_img_transform("builtin", "shapes-vit")
    x_B3HW = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.inference_mode():
        acts_ND = vit.run_to(x_B3HW, vit.block_index(-2))[:, vit.layout.n_prefix :].reshape(-1, vit.d_vit)
    labels_NC = inputs.labels_for(paths, synthetic.CONCEPTS, vit.layout.grid).patch_NPC.reshape(
        -1, N_CONCEPTS
    )
    mean_D = acts_ND.mean(0)
    scale = float((acts_ND - mean_D).norm(dim=-1).mean()) / vit.d_vit**0.5
    x_ND = (acts_ND - mean_D) / scale
    has = labels_NC.bool()
    concepts_CD = torch.stack([x_ND[has[:, c]].mean(0) - x_ND[~has[:, c]].mean(0) for c in range(N_CONCEPTS)])
    g = torch.Generator().manual_seed(seed)
    w_SD = F.normalize(torch.randn(D_SAE, vit.d_vit, generator=g), dim=-1)
    w_SD[:N_CONCEPTS] = F.normalize(concepts_CD, dim=-1)
    cfg = saev.nn.SaeConfig(
        d_vit=vit.d_vit, d_sae=D_SAE, activation=saev.nn.TopK(k=4), subtract_b_dec=False, seed=seed
    )
    sae = saev.nn.SparseAutoencoder(cfg, saev.nn.Provenance("builtin", "shapes-vit", -2, "patches"))
    with torch.no_grad():
        sae.W_dec.copy_(w_SD)
        sae.W_enc.copy_(w_SD.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.set_normalization(ActNorm(mean_D, scale))
    return sae.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lens")
    synthetic.generate(root, 24, seed=7)
    paths = sorted((root / "images").iterdir())
    vit = make_vit("builtin", "shapes-vit")
    transform = make_img_transform("builtin", "shapes-vit")
    x_B3HW = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[:12]])
    return SplicedVit(vit, concept_sae(paths)), x_B3HW


def test_a_concept_direction_promotes_its_own_class_far_more_than_random_latents(world):
    spliced, x = world
    head = builtin_head(spliced.vit, "patch")
    latents = list(range(D_SAE))
    # A typical concept's code: the distance between the concept's mean patch and the others'.
    lenses = logit_lens(spliced, head, x, latents, [20.0] * D_SAE, top=3)
    deltas_LC = logit_deltas(spliced, head, x, latents, [20.0] * D_SAE)
    for c, name in enumerate(synthetic.CONCEPTS):
        assert lenses[c].promoted[0][0] == name  # its own class is the one it promotes most
        random_C = deltas_LC[N_CONCEPTS:, c]
        assert deltas_LC[c, c] > 2 * random_C.max(), name
    # The opposite direction suppresses: most patches lack any one concept already, so its logit
    # falls less than it rose, but it is (nearly always) the class that falls most.
    minus = logit_lens(spliced, head, x, latents[:N_CONCEPTS], [-20.0] * N_CONCEPTS)
    own = [lens.suppressed[0][0] == name for lens, name in zip(minus, synthetic.CONCEPTS, strict=True)]
    assert sum(own) >= 9, own
    assert all(d < 0 for lens in minus for _, d in lens.suppressed)


@pytest.mark.parametrize("kind", ["patch", "image"])
def test_batched_lens_equals_one_latent_at_a_time(world, kind):
    spliced, x = world
    head = builtin_head(spliced.vit, kind)
    latents, scales = [4, 30, 0, 4], [3.0, 5.0, -2.0, 0.0]
    # max_rows of 2 images' worth of copies: several chunks, one latent in the last.
    got_LC = logit_deltas(spliced, head, x[:4], latents, scales, max_rows=12)
    prefix = spliced.prefix(x[:4])
    clean = head.logits(spliced.finish(prefix.tokens_BTD))
    for k, (latent, scale) in enumerate(zip(latents, scales, strict=True)):
        direction_D = scale * spliced.sae.W_dec[latent] * spliced.sae.act_scale
        read_BND = direction_D.expand(len(prefix.tokens_BTD), len(spliced.index_N), -1)
        edited = head.logits(spliced.finish(spliced.add_to_read(prefix, read_BND)))
        want_C = (edited - clean).reshape(-1, len(head.classes)).mean(0)
        torch.testing.assert_close(got_LC[k], want_C, rtol=1e-4, atol=1e-4)
    assert got_LC[3].abs().max() == 0  # a zero scale changes nothing


def test_lens_results_are_ordered_and_serialise(world):
    spliced, x = world
    head = builtin_head(spliced.vit, "patch")
    [lens] = logit_lens(spliced, head, x[:4], [6], [15.0], top=4)
    deltas_C = logit_deltas(spliced, head, x[:4], [6], [15.0])[0]
    assert isinstance(lens, LatentLens) and lens.latent == 6 and lens.scale == 15.0
    assert [d for _, d in lens.promoted] == sorted(deltas_C[deltas_C > 0].tolist(), reverse=True)[:4]
    assert [d for _, d in lens.suppressed] == sorted(deltas_C[deltas_C < 0].tolist())[:4]
    assert lens.to_json() == {
        "latent": 6,
        "scale": 15.0,
        "head": "builtin-patch",
        "promoted": [{"class": c, "logit_delta": d} for c, d in lens.promoted],
        "suppressed": [{"class": c, "logit_delta": d} for c, d in lens.suppressed],
    }
    with pytest.raises(ConfigError, match="one scale per latent"):
        logit_deltas(spliced, head, x[:1], [1, 2], [1.0])
    with pytest.raises(ConfigError, match=r"latents \[64\]"):
        logit_deltas(spliced, head, x[:1], [64], [1.0])

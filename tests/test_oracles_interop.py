"""saev's SAELens and sparsify readers and writers, checked against the libraries themselves.

tests/test_nn_formats.py checks the same files against forwards written out by hand; here SAELens
(6.x) and sparsify (eai-sparsify) build, save, load and run the SAEs: a folder either library writes
must load in saev with the codes and reconstructions the library computes, and a folder saev writes
must load in the library with saev's codes. Skipped when the libraries are not installed.
"""

import json
import os

import numpy as np
import pytest
import torch

from tests.conftest import ORACLE_HINT, import_or_skip

pytestmark = pytest.mark.oracle

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # sparsify's eager decoder: no Triton, no GPU

sae_lens = import_or_skip("sae_lens", ORACLE_HINT)
sparsify = import_or_skip("sparsify", ORACLE_HINT)

from sae_lens.training.activation_scaler import ActivationScaler  # noqa: E402

import saev.nn  # noqa: E402
from saev.cli import main  # noqa: E402
from saev.nn import checkpoints, conversion  # noqa: E402
from saev.nn.architectures.batchtopk import BatchTopK  # noqa: E402
from saev.nn.architectures.gated import Gated  # noqa: E402
from saev.nn.architectures.jumprelu import JumpRelu  # noqa: E402
from saev.nn.architectures.relu import Relu  # noqa: E402
from saev.nn.architectures.topk import TopK  # noqa: E402
from tests.test_nn_formats import D_SAE, D_VIT, random_sae  # noqa: E402

TOL = 1e-5
"""float32: largest difference allowed, absolute, or relative to the largest code or reconstruction."""
K = 4


def batch(n=256, seed=1, scale=1.0) -> torch.Tensor:
    return torch.randn(n, D_VIT, generator=torch.Generator().manual_seed(seed)) * scale


def assert_same(got, want, what, *, relative=False) -> float:
    """Largest |got - want|, asserted <= TOL (times the largest |want| if `relative`)."""
    got, want = got.detach().float(), want.detach().float()
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = float((got - want).abs().max())
    bound = TOL * max(1.0, float(want.abs().max())) if relative else TOL
    print(f"{what}: max abs error {err:.2e} (of {float(want.abs().max()):.3g})")
    assert err <= bound, f"{what}: max abs error {err:.3g} > {bound:.3g}"
    return err


def assert_fires(codes, what):
    """More than one latent per token on average: a comparison of all-zero codes would prove nothing."""
    l0 = float((codes > 0).sum(-1).float().mean())
    assert l0 > 1, f"{what}: only {l0:.2f} latents fire per token"
    # ... and not every latent either, so the sparsity pattern is compared too.
    assert l0 < D_SAE - 1, f"{what}: {l0:.2f} of {D_SAE} latents fire per token"


# SAELens -> saev.


def lens_sae(arch, *, apply_b_dec=True, rescale=False, normalize="none", seed=0):
    """An SAE built by SAELens' own classes, every parameter random (thresholds positive)."""
    common = dict(d_in=D_VIT, d_sae=D_SAE, apply_b_dec_to_input=apply_b_dec, normalize_activations=normalize)
    cfg = {
        "standard": lambda: sae_lens.StandardSAEConfig(**common),
        "topk": lambda: sae_lens.TopKSAEConfig(k=K, rescale_acts_by_decoder_norm=rescale, **common),
        "jumprelu": lambda: sae_lens.JumpReLUSAEConfig(**common),
        "gated": lambda: sae_lens.GatedSAEConfig(**common),
    }[arch]()
    sae = sae_lens.SAE.from_dict(cfg.to_dict())
    assert sae.cfg.architecture() == arch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.05)
            elif name == "W_dec" and rescale:  # decoder norms far from 1, so the rescaling matters
                p.copy_(torch.randn(p.shape, generator=gen) * torch.rand(D_SAE, 1, generator=gen).add(0.2))
            elif name in ("r_mag", "b_mag", "b_gate", "b_enc", "b_dec"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    for name, p in sae.named_parameters():
        assert p.abs().min() > 0, name  # nonzero everywhere: a bias read from the wrong tensor shows
    return sae.eval()


def lens_load(folder):
    return sae_lens.SAE.load_from_disk(folder).eval()


LENS_CASES = [
    ("standard", True, False),
    ("standard", False, False),
    ("topk", True, False),
    ("topk", False, False),
    ("topk", True, True),
    ("topk", False, True),
    ("jumprelu", True, False),
    ("jumprelu", False, False),
    ("gated", True, False),
    ("gated", False, False),
]


@pytest.mark.parametrize(
    ("arch", "apply_b_dec", "rescale"),
    LENS_CASES,
    ids=[f"{a}-{'x-b_dec' if b else 'x'}{'-rescaled' if r else ''}" for a, b, r in LENS_CASES],
)
def test_saelens_folders_load_in_saev_with_saelens_codes(tmp_path, arch, apply_b_dec, rescale):
    lens = lens_sae(arch, apply_b_dec=apply_b_dec, rescale=rescale)
    lens.save_model(tmp_path)
    sae = saev.nn.load(tmp_path)
    assert sae.provenance.source == "saelens"
    assert sae.cfg.subtract_b_dec == apply_b_dec
    x = batch()
    with torch.no_grad():
        want = lens.encode(x)
        got = sae.encode(x)
        assert_fires(want, arch)
        assert_same(got, want, f"{arch} codes")
        assert_same(sae.decode(got), lens.decode(want), f"{arch} reconstructions")
        # A leading batch shape passes through too.
        assert_same(sae.encode(x.reshape(8, 32, D_VIT)), want.reshape(8, 32, D_SAE), f"{arch} 3-d codes")


@pytest.mark.parametrize(("arch", "rescale"), [("standard", False), ("topk", True), ("jumprelu", False)])
def test_saelens_scaling_factor_is_applied_as_saelens_trainer_does(tmp_path, arch, rescale):
    """normalize_activations='expected_average_only_in': SAELens' SAE reads `x * s` (its trainer's
    ActivationScaler scales inputs and unscales outputs); saev folds `s` in and reads raw x."""
    s = 2.5
    lens = lens_sae(arch, rescale=rescale, normalize="expected_average_only_in", seed=3)
    lens.save_model(tmp_path)
    ActivationScaler(scaling_factor=s).save(str(tmp_path / "activation_scaler.json"))
    assert json.loads((tmp_path / "activation_scaler.json").read_text())["scaling_factor"] == s
    sae = saev.nn.load(tmp_path)
    x = batch(seed=2, scale=1 / s)  # raw activations; SAELens saw them scaled up by s
    with torch.no_grad():
        want = lens.encode(x * s)
        got = sae.encode(x)
        assert_fires(want, arch)
        assert_same(got, want, f"{arch} codes, scaled", relative=True)
        assert_same(sae.decode(got), lens.decode(want) / s, f"{arch} reconstructions, scaled", relative=True)
        # Without the factor the codes differ: the test would notice a reader that ignored it.
        assert (lens.encode(x) - want).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_saelens_training_saes_saved_for_inference_load_in_saev(tmp_path, arch):
    """What a SAELens training run leaves: `save_inference_model` folds a TopK's decoder norms, and writes
    a BatchTopK as a JumpReLU with its running threshold on every latent."""
    cfg_cls = {"topk": sae_lens.TopKTrainingSAEConfig, "batchtopk": sae_lens.BatchTopKTrainingSAEConfig}[arch]
    training = sae_lens.TrainingSAE.from_dict(cfg_cls(d_in=D_VIT, d_sae=D_SAE, k=K).to_dict())
    assert training.cfg.rescale_acts_by_decoder_norm
    gen = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for p in training.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    if arch == "batchtopk":
        training.topk_threshold = torch.tensor(1.5, dtype=torch.double)
    training.save_inference_model(tmp_path)
    lens = lens_load(tmp_path)
    assert lens.cfg.architecture() == {"topk": "topk", "batchtopk": "jumprelu"}[arch]
    sae = saev.nn.load(tmp_path)
    x = batch(seed=9)
    with torch.no_grad():
        want = lens.encode(x)
        got = sae.encode(x)
        assert_fires(want, arch)
        assert_same(got, want, f"{arch} (training) codes", relative=True)
        assert_same(sae.decode(got), lens.decode(want), f"{arch} (training) reconstructions", relative=True)
        if arch == "topk":  # the folded inference SAE still computes the training SAE's codes
            assert_same(got, training.eval().encode(x), "topk (training SAE itself) codes", relative=True)


def test_saelens_thresholds_at_or_below_zero_act_as_relu(tmp_path):
    """A fresh SAELens JumpReLU has zero thresholds; saev stores log-thresholds, so it clamps them."""
    lens = lens_sae("jumprelu", seed=6)
    with torch.no_grad():
        lens.threshold[:16] = 0.0
        lens.threshold[16:32] = -0.3
    lens.save_model(tmp_path)
    sae = saev.nn.load(tmp_path)
    x = batch(seed=6)
    with torch.no_grad():
        want = lens.encode(x)
        pre = (x - lens.b_dec) @ lens.W_enc + lens.b_enc
        assert (want[:, :32] > 0).any() and torch.equal(want[:, :32], pre[:, :32].relu())
        assert_fires(want, "jumprelu, thresholds <= 0")
        assert_same(sae.encode(x), want, "jumprelu thresholds <= 0 codes")


# saev -> SAELens.

SAEV_ARCHS = {
    "relu": Relu(),
    "topk": TopK(k=K),
    "batchtopk": BatchTopK(k=K),
    "jumprelu": JumpRelu(),
    "gated": Gated(),
}


def assert_lens_matches(lens, sae, x, what):
    """SAELens' codes and reconstructions of raw `x` are saev's."""
    with torch.no_grad():
        want = sae.encode(x)
        got = lens.encode(x)
        assert_fires(want, what)
        assert_same(got, want, f"{what} codes", relative=True)
        assert_same(lens.decode(got), sae.decode(want), f"{what} reconstructions", relative=True)


@pytest.mark.parametrize("norm", [False, True], ids=["raw", "normalised"])
@pytest.mark.parametrize("subtract_b_dec", [True, False], ids=["x-b_dec", "x"])
@pytest.mark.parametrize("arch", list(SAEV_ARCHS))
def test_saev_saelens_exports_load_in_saelens_with_saev_codes(tmp_path, arch, subtract_b_dec, norm):
    sae = random_sae(SAEV_ARCHS[arch], subtract_b_dec=subtract_b_dec, norm=norm)
    if isinstance(sae.cfg.activation, BatchTopK):
        assert float(sae.activation.threshold) > 0
    checkpoints.save(tmp_path, sae, "saelens")
    lens = lens_load(tmp_path)
    expected = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}
    assert lens.cfg.architecture() == expected.get(arch, "gated")
    assert lens.cfg.normalize_activations == "none" and lens.cfg.apply_b_dec_to_input == subtract_b_dec
    assert_lens_matches(lens, sae, conversion.probe_inputs(sae), f"{arch} (subtract_b_dec={subtract_b_dec})")


def test_saelens_export_keeps_hook_and_model_metadata(tmp_path):
    """SAELens reads the provenance saev records (its metadata fields), not only the weights."""
    sae = random_sae(TopK(k=K), norm=True)
    checkpoints.save(tmp_path, sae, "saelens")
    lens = lens_load(tmp_path)
    assert lens.cfg.metadata.hook_name == "blocks.10.hook_resid_post"
    assert lens.cfg.metadata.model_name == "clip/ViT-B-16/openai"


def dictionary_activations(atoms, n, seed):
    """Tokens like tests.ground_truth's: positive mixtures of 3 to 5 atoms plus a little noise."""
    rng = np.random.default_rng(seed)
    codes = np.zeros((n, len(atoms)), dtype=np.float32)
    for row in range(n):
        picked = rng.choice(len(atoms), size=rng.integers(3, 6), replace=False)
        codes[row, picked] = rng.uniform(0.5, 2.0, size=len(picked))
    x = codes @ atoms + 0.01 * rng.standard_normal((n, atoms.shape[1])).astype(np.float32)
    return torch.from_numpy(x)


def test_saelens_export_of_a_saev_trained_topk_sae_loads_in_saelens_with_the_same_codes(tmp_path):
    """The key case: `saev train` a TopK SAE (with the normalisation statistics training records),
    export it as a SAELens folder, load that in SAELens itself: the same codes and reconstructions."""
    from saev.training import TrainConfig, train
    from saev.training.export import export
    from tests.ground_truth import make_dictionary_store

    d = make_dictionary_store(tmp_path / "dict", n_atoms=32, d=D_VIT, n_tokens=4000, tokens_per_img=8)
    cfg = TrainConfig(
        shards=d.store,
        out=tmp_path / "runs",
        layer=0,
        exp_factor=D_SAE // D_VIT,
        k=K,
        n_train=6000,
        batch_size=500,
        lr=3e-3,
        lr_warmup=2,
        log_every=5,
        ckpt_every=100,
    )
    [run] = train(cfg)
    sae = saev.nn.load(run.checkpoint).eval()
    assert isinstance(sae.cfg.activation, TopK) and sae.normalization is not None
    exported = export(run.path, tmp_path / "lens", "saelens")
    lens = lens_load(exported.folder)
    assert lens.cfg.architecture() == "topk" and lens.cfg.k == K
    x = dictionary_activations(d.atoms_AD, 512, seed=7)  # held out: not the training tokens
    assert_lens_matches(lens, sae, x, "trained topk")
    with torch.no_grad():
        # What was trained is in the file: SAELens' reconstructions explain most of the variance.
        fve = 1 - (lens.decode(lens.encode(x)) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert fve > 0.3, float(fve)
    # And the same file reads back into saev as the SAE that was trained.
    agreement = conversion.compare(sae, saev.nn.load(exported.folder), x)
    assert agreement.relative_error <= TOL, agreement


# sparsify -> saev and saev -> sparsify.


def sparsify_codes(coder, x):
    """sparsify's top-k codes, scattered into [n, num_latents], and its reconstructions."""
    top_acts, top_indices, _ = coder.encode(x)
    dense = torch.zeros(len(x), coder.num_latents).scatter_(-1, top_indices, top_acts)
    return dense, coder.decode(top_acts, top_indices)


@pytest.mark.parametrize(
    "size", [{"num_latents": D_SAE}, {"expansion_factor": D_SAE // D_VIT}], ids=["num_latents", "expansion"]
)
def test_sparsify_folders_load_in_saev_with_sparsify_codes(tmp_path, size):
    coder = sparsify.SparseCoder(D_VIT, sparsify.SparseCoderConfig(k=K, **size))
    assert coder.num_latents == D_SAE
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in coder.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if name in ("encoder.bias", "b_dec") else 0.3))
    coder.save_to_disk(tmp_path)
    sae = saev.nn.load(tmp_path)
    assert sae.provenance.source == "sparsify" and sae.cfg.activation == TopK(k=K)
    x = batch(seed=4)
    with torch.no_grad():
        want, recon = sparsify_codes(coder, x)
        got = sae.encode(x)
        assert_fires(want, "sparsify")
        assert_same(got, want, "sparsify codes")
        assert_same(sae.decode(got), recon, "sparsify reconstructions")


@pytest.mark.parametrize("subtract_b_dec", [True, False], ids=["x-b_dec", "x"])
def test_saev_sparsify_exports_load_in_sparsify_with_saev_codes(tmp_path, subtract_b_dec):
    sae = random_sae(TopK(k=K), subtract_b_dec=subtract_b_dec, norm=True)
    checkpoints.save(tmp_path, sae, "sparsify")
    coder = sparsify.SparseCoder.load_from_disk(tmp_path)
    assert (coder.cfg.k, coder.num_latents, coder.d_in) == (K, D_SAE, D_VIT)
    x = conversion.probe_inputs(sae)
    with torch.no_grad():
        want = sae.encode(x)
        got, recon = sparsify_codes(coder, x)
        assert_fires(want, "saev topk")
        assert_same(got, want, "saev -> sparsify codes", relative=True)
        assert_same(recon, sae.decode(want), "saev -> sparsify reconstructions", relative=True)


@pytest.mark.parametrize("apply_b_dec", [True, False], ids=["x-b_dec", "x"])
def test_saelens_topk_converted_to_sparsify_keeps_saelens_codes(tmp_path, apply_b_dec):
    """Library to library through saev: a rescaled SAELens TopK, converted to a sparsify folder, computes
    SAELens' codes in sparsify (sparsify always subtracts b_dec, so `x` SAEs are rewritten for it)."""
    lens = lens_sae("topk", apply_b_dec=apply_b_dec, rescale=True, seed=13)
    lens.save_model(tmp_path / "lens")
    conversion.convert(tmp_path / "lens", tmp_path / "sp", "sparsify")
    coder = sparsify.SparseCoder.load_from_disk(tmp_path / "sp")
    x = batch(seed=13)
    with torch.no_grad():
        want = lens.encode(x)
        got, recon = sparsify_codes(coder, x)
        assert_fires(want, "saelens topk")
        assert_same(got, want, "saelens -> sparsify codes", relative=True)
        assert_same(recon, lens.decode(want), "saelens -> sparsify reconstructions", relative=True)


# saev convert.


CONVERT_CASES = [
    ("standard", False, 1.0),
    ("topk", True, 1.0),
    ("jumprelu", False, 1.0),
    ("gated", False, 1.0),
    ("topk", True, 2.5),
]


@pytest.mark.parametrize(
    ("arch", "rescale", "s"),
    CONVERT_CASES,
    ids=[f"{a}{'-rescaled' if r else ''}{'-scaled' if s != 1 else ''}" for a, r, s in CONVERT_CASES],
)
def test_convert_round_trip_through_native_keeps_saelens_codes(tmp_path, capsys, arch, rescale, s):
    """A SAELens-written folder -> `saev convert` -> native -> `saev convert` -> SAELens folder: SAELens
    computes the same codes from both folders. With a scaling factor (`s`, in activation_scaler.json) the
    first folder reads `x * s` and the second, which has it folded in, raw `x`."""
    normalize = "none" if s == 1 else "expected_average_only_in"
    lens = lens_sae(arch, apply_b_dec=arch != "gated", rescale=rescale, normalize=normalize, seed=11)
    lens.save_model(tmp_path / "lens")
    if s != 1:
        ActivationScaler(scaling_factor=s).save(str(tmp_path / "lens" / "activation_scaler.json"))
    main(["convert", str(tmp_path / "lens"), str(tmp_path / "native.safetensors")])
    main(["convert", str(tmp_path / "native.safetensors"), str(tmp_path / "again"), "--to", "saelens"])
    assert "(native) ->" in capsys.readouterr().err
    first, again = lens_load(tmp_path / "lens"), lens_load(tmp_path / "again")
    assert again.cfg.architecture() == arch and again.cfg.normalize_activations == "none"
    # The SAELens config comes back, but for what saev folded into the weights.
    cfg, cfg_again = (
        json.loads((f / "cfg.json").read_text()) for f in (tmp_path / "lens", tmp_path / "again")
    )
    folded = {"normalize_activations", "rescale_acts_by_decoder_norm", "metadata"}
    assert {k: v for k, v in cfg.items() if k not in folded} == {
        k: v for k, v in cfg_again.items() if k not in folded
    }
    assert cfg["metadata"].items() <= cfg_again["metadata"].items()
    x = batch(seed=12, scale=1 / s)
    with torch.no_grad():
        want = first.encode(x * s)
        got = again.encode(x)
        assert_fires(want, arch)
        assert_same(got, want, f"{arch} round-trip codes", relative=True)
        recon = first.decode(want) / s
        assert_same(again.decode(got), recon, f"{arch} round-trip reconstructions", relative=True)

"""Reading and writing other libraries' SAE formats, without those libraries: SAELens and sparsify folders
written by hand from their documented layouts, ViT-Prisma checkpoints as ViT-Prisma pickles them
(tests/prisma_fixtures.py), round trips between every writable format, and `saev convert`."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import saev.nn
from saev.cli import main
from saev.errors import CheckpointError
from saev.nn import checkpoints, conversion, formats
from saev.nn.architectures.batchtopk import BatchTopK
from saev.nn.architectures.gated import Gated
from saev.nn.architectures.jumprelu import JumpRelu
from saev.nn.architectures.relu import Relu
from saev.nn.architectures.topk import TopK
from saev.normalization import ActNorm
from tests import prisma_fixtures as pf

D_VIT, D_SAE = 16, 64
ARCHS = {
    "relu": Relu(),
    "topk": TopK(k=4),
    "batchtopk": BatchTopK(k=4),
    "jumprelu": JumpRelu(),
    "gated": Gated(),
}


def random_sae(act, subtract_b_dec=True, norm=False, seed=0) -> saev.nn.SparseAutoencoder:
    torch.manual_seed(seed)
    cfg = saev.nn.SaeConfig(d_vit=D_VIT, d_sae=D_SAE, activation=act, subtract_b_dec=subtract_b_dec)
    prov = saev.nn.Provenance("clip", "ViT-B-16/openai", 10, "patches", 196, dataset="photos/")
    sae = saev.nn.SparseAutoencoder(cfg, prov)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.add_(0.3 * torch.randn_like(p))
        if isinstance(act, JumpRelu):
            sae.activation.log_threshold.copy_(torch.rand(D_SAE).mul(0.5).add(0.05).log())
        if isinstance(act, BatchTopK):
            sae.activation.threshold.fill_(0.4)
        if isinstance(act, Gated):
            sae.activation.r_mag.normal_(0, 0.2)
            sae.activation.b_mag.normal_(0, 0.2)
    if norm:
        sae.set_normalization(ActNorm(torch.randn(D_VIT) * 2, 3.0))
    return sae.eval()


def writable(act, subtract_b_dec: bool) -> list[str]:
    out = ["native", "saelens"]
    if isinstance(act, Relu) or (isinstance(act, TopK) and not act.relu and not subtract_b_dec):
        out.append("saev-pt")
    if isinstance(act, TopK) and act.relu:
        out.append("sparsify")
    return out


def target(tmp_path, fmt: str, tag: str = ""):
    return tmp_path / (f"{fmt}{tag}" + {"native": ".safetensors", "saev-pt": ".pt"}.get(fmt, ""))


@pytest.mark.parametrize("norm", [False, True], ids=["raw", "normalised"])
@pytest.mark.parametrize("subtract_b_dec", [True, False], ids=["x-b_dec", "x"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_writable_format_computes_the_same_codes(tmp_path, arch, subtract_b_dec, norm):
    sae = random_sae(ARCHS[arch], subtract_b_dec, norm)
    x = conversion.probe_inputs(sae)
    with torch.no_grad():
        f = sae.encode(x)
    assert (f > 0).sum(-1).float().mean() > 1  # latents fire: the comparison means something
    for fmt in writable(ARCHS[arch], subtract_b_dec):
        checkpoints.save(target(tmp_path, fmt), sae, fmt)
        back = checkpoints.load(target(tmp_path, fmt))
        agreement = conversion.compare(sae, back, x)
        assert agreement.relative_error < 1e-5, (fmt, agreement)
        # Provenance survives every format that has room for it.
        if fmt in ("native", "saelens"):
            assert (back.provenance.vit_ckpt, back.provenance.layer) == ("ViT-B-16/openai", 10)


@pytest.mark.parametrize("subtract_b_dec", [True, False], ids=["x-b_dec", "x"])
@pytest.mark.parametrize("arch", ["relu", "topk", "gated", "jumprelu"])
def test_round_trips_through_every_format_are_exact(tmp_path, arch, subtract_b_dec):
    """native -> X -> native reproduces the weights bit for bit, for an SAE every format expresses as it is
    (no statistics to fold; sparsify always encodes x - b_dec, so only such SAEs pass through unchanged)."""
    sae = random_sae(ARCHS[arch], subtract_b_dec=subtract_b_dec)
    for fmt in writable(ARCHS[arch], subtract_b_dec):
        if fmt == "sparsify" and not subtract_b_dec:
            continue
        checkpoints.save(target(tmp_path, fmt), sae, fmt)
        back = checkpoints.load(target(tmp_path, fmt))
        assert back.cfg.activation == sae.cfg.activation and back.cfg.subtract_b_dec == sae.cfg.subtract_b_dec
        for name, tensor in sae.state_dict().items():
            if name == "activation.log_threshold" and fmt == "saelens":
                # SAELens stores thresholds, saev their logs; float32 exp then log can land one ulp away.
                torch.testing.assert_close(back.state_dict()[name], tensor, rtol=2.5e-7, atol=0)
            else:
                assert torch.equal(back.state_dict()[name], tensor), (fmt, name)


def test_saelens_folder_round_trip_restores_its_files(tmp_path):
    folder = tmp_path / "lens"
    write_saelens(
        folder, "jumprelu", extra_metadata={"hook_name": "blocks.9.hook_resid_post", "model_name": "m"}
    )
    sae = saev.nn.load(folder)
    assert sae.provenance.origin["config"]["metadata"]["hook_name"] == "blocks.9.hook_resid_post"
    checkpoints.dump(tmp_path / "native.safetensors", sae)
    checkpoints.save(tmp_path / "again", saev.nn.load(tmp_path / "native.safetensors"), "saelens")
    original, again = (
        load_file(folder / "sae_weights.safetensors"),
        load_file(tmp_path / "again/sae_weights.safetensors"),
    )
    assert sorted(original) == sorted(again)
    for name in original:
        if name == "threshold":  # through saev's log-thresholds and back: within 3 float32 ulps
            torch.testing.assert_close(again[name], original[name], rtol=4e-7, atol=0)
        else:
            assert torch.equal(original[name], again[name]), name
    cfg, cfg_again = (json.loads((f / "cfg.json").read_text()) for f in (folder, tmp_path / "again"))
    for key, value in cfg.items():
        if key == "metadata":
            assert value.items() <= cfg_again["metadata"].items()
        else:
            assert cfg_again[key] == value, key


# SAELens folders, written from SAELens' documented layout.


def write_saelens(folder, arch, *, d_in=D_VIT, d_sae=D_SAE, cfg_extra=None, extra_metadata=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=gen) * 0.3,
        "W_dec": torch.randn(d_sae, d_in, generator=gen) * 0.3,
        "b_dec": torch.randn(d_in, generator=gen) * 0.1,
        "b_gate" if arch == "gated" else "b_enc": torch.randn(d_sae, generator=gen) * 0.1,
    }
    if arch == "jumprelu":
        tensors["threshold"] = torch.rand(d_sae, generator=gen) * 0.3
    if arch == "gated":
        tensors |= {
            "r_mag": torch.randn(d_sae, generator=gen) * 0.1,
            "b_mag": torch.randn(d_sae, generator=gen) * 0.1,
        }
    cfg = (
        {
            "architecture": arch,
            "d_in": d_in,
            "d_sae": d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": {"sae_lens_version": "6.0.0", **(extra_metadata or {})},
        }
        | ({"k": 4} if arch == "topk" else {})
        | (cfg_extra or {})
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return tensors


def saelens_encode(x, t, arch, apply_b_dec=True, rescale=False, scale=1.0):
    """SAELens' inference forward, written out (sae_lens/saes/*.py)."""
    sae_in = x * scale - t["b_dec"] * apply_b_dec
    if arch == "gated":
        gate = (sae_in @ t["W_enc"] + t["b_gate"]) > 0
        return gate * torch.relu(sae_in @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"])
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    if arch == "standard":
        return torch.relu(pre)
    if arch == "jumprelu":
        return torch.relu(pre) * (pre > t["threshold"])
    if rescale:
        pre = pre * t["W_dec"].norm(dim=-1)
    top = pre.topk(4, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
def test_saelens_folders_load_with_their_forward(tmp_path, arch):
    t = write_saelens(tmp_path / arch, arch)
    sae = saev.nn.load(tmp_path / arch)
    x = torch.randn(64, D_VIT)
    with torch.no_grad():
        f = sae.encode(x)
        torch.testing.assert_close(f, saelens_encode(x, t, arch), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.decode(f), f @ t["W_dec"] + t["b_dec"], atol=1e-5, rtol=1e-5)
    assert formats.detect(tmp_path / arch) == "saelens" and sae.provenance.source == "saelens"


def test_saelens_rescaled_topk_and_scaling_factor_are_folded(tmp_path):
    folder = tmp_path / "lens"
    t = write_saelens(
        folder,
        "topk",
        cfg_extra={"rescale_acts_by_decoder_norm": True, "normalize_activations": "expected_average_only_in"},
    )
    with pytest.raises(CheckpointError, match="activation_scaler.json \\(missing\\)"):
        saev.nn.load(folder)
    (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 2.5}))
    sae = saev.nn.load(folder)
    x = torch.randn(64, D_VIT)
    with torch.no_grad():
        expected = saelens_encode(x, t, "topk", rescale=True, scale=2.5)
        torch.testing.assert_close(sae.encode(x), expected, atol=1e-5, rtol=1e-5)
        # SAELens decodes codes / decoder norm, then undoes the input scale.
        recon = (expected / t["W_dec"].norm(dim=-1)) @ t["W_dec"] + t["b_dec"]
        torch.testing.assert_close(sae.decode(sae.encode(x)), recon / 2.5, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"architecture": "matching_pursuit"}, "architecture 'matching_pursuit' is not supported"),
        ({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm' is not supported"),
        ({"d_in": "16"}, "field 'd_in' must be an integer"),
        ({"d_sae": 32}, "'W_enc' should have shape [16, 32], but the file has [16, 64]"),
    ],
)
def test_bad_saelens_configs_are_named(tmp_path, change, needle):
    write_saelens(tmp_path, "standard", cfg_extra=change)
    with pytest.raises(CheckpointError) as info:
        saev.nn.load(tmp_path)
    assert needle in str(info.value) and str(tmp_path) in str(info.value)


def test_saelens_weights_missing_a_tensor_are_named(tmp_path):
    write_saelens(tmp_path, "jumprelu")
    tensors = load_file(tmp_path / "sae_weights.safetensors")
    del tensors["threshold"]
    save_file(tensors, tmp_path / "sae_weights.safetensors")
    with pytest.raises(CheckpointError, match="a SAELens 'jumprelu' SAE has tensors .*'threshold'"):
        saev.nn.load(tmp_path)


# sparsify folders.


def write_sparsify(folder, *, k=4, skip=False, transposed=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    enc = torch.randn(D_SAE, D_VIT, generator=gen) * 0.3
    tensors = {
        "encoder.weight": enc.T.contiguous() if transposed else enc,
        "encoder.bias": torch.randn(D_SAE, generator=gen) * 0.1,
        "W_dec": torch.randn(D_SAE, D_VIT, generator=gen) * 0.3,
        "b_dec": torch.randn(D_VIT, generator=gen) * 0.1,
    }
    if skip:
        tensors["W_skip"] = torch.zeros(D_VIT, D_VIT)
    cfg = {
        "activation": "topk",
        "expansion_factor": D_SAE // D_VIT,
        "normalize_decoder": True,
        "num_latents": 0,
        "k": k,
        "multi_topk": False,
        "skip_connection": skip,
        "transcode": False,
        "d_in": D_VIT,
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "sae.safetensors")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return tensors


def test_sparsify_folders_load_with_their_forward(tmp_path):
    t = write_sparsify(tmp_path)
    sae = saev.nn.load(tmp_path / "sae.safetensors")  # the weights file also finds its folder
    x = torch.randn(64, D_VIT)
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    top = pre.topk(4, dim=-1)
    expected = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), expected, atol=1e-5, rtol=1e-5)
    assert formats.detect(tmp_path) == "sparsify"


def test_sparsify_layout_mismatches_and_skip_connections_are_refused(tmp_path):
    write_sparsify(tmp_path / "t", transposed=True)
    with pytest.raises(
        CheckpointError, match=r"encoder.weight of shape \[num_latents, d_in\] = \[64, 16\].*has \[16, 64\]"
    ):
        saev.nn.load(tmp_path / "t")
    write_sparsify(tmp_path / "s", skip=True)
    with pytest.raises(CheckpointError, match="skip_connection=true is not supported"):
        saev.nn.load(tmp_path / "s")


# ViT-Prisma checkpoints.


@pytest.mark.parametrize("era", ["2024", "2025"])
@pytest.mark.parametrize(
    ("arch", "fn", "kwargs"),
    [("standard", "relu", None), ("standard", "topk", {"k": 3}), ("gated", "relu", None)],
)
def test_prisma_checkpoints_match_their_forward(tmp_path, era, arch, fn, kwargs):
    _, sd = pf.write_legacy_pt(
        tmp_path / "weights.pt",
        era=era,
        architecture=arch,
        activation_fn_str=fn,
        activation_fn_kwargs=kwargs,
        hook_point_layer=9,
        layer_subtype="hook_resid_post",
        cls_token_only=True,
    )
    x = torch.randn(64, 8)
    for path in (tmp_path, tmp_path / "weights.pt"):
        sae = saev.nn.load(path)
        with torch.no_grad():
            f = sae.encode(x)
            torch.testing.assert_close(f, pf.ref_encode(x, sd, arch, fn, kwargs), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(sae.decode(f), pf.ref_decode(f, sd), atol=1e-5, rtol=1e-5)
    prov = sae.provenance
    assert (prov.vit_family, prov.vit_ckpt) == ("clip", "hf-hub:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K")
    assert (prov.layer, prov.tokens, prov.n_patches_per_img, prov.source) == (9, "cls", 49, "prisma")
    # Without config.json, the config pickled with the weights is read (into a stand-in; no code runs).
    (tmp_path / "config.json").unlink()
    assert torch.equal(saev.nn.load(tmp_path / "weights.pt").W_enc, sae.W_enc)


def test_prisma_bare_state_dicts_and_refusals(tmp_path):
    _, sd = pf.write_bare_pt(tmp_path / "bare", layer_subtype="hook_resid_post")
    sae = saev.nn.load(tmp_path / "bare")
    x = torch.randn(8, 8)
    torch.testing.assert_close(sae.encode(x), pf.ref_encode(x, sd), atol=1e-5, rtol=1e-5)
    pf.write_bare_pt(tmp_path / "ln", normalize_activations="layer_norm")
    with pytest.raises(CheckpointError, match="normalize_activations='layer_norm' normalises each token"):
        saev.nn.load(tmp_path / "ln")
    pf.write_legacy_pt(tmp_path / "tc" / "weights.pt", era="2025", architecture="transcoder")
    with pytest.raises(CheckpointError, match="a ViT-Prisma transcoder"):
        saev.nn.load(tmp_path / "tc")


def test_prisma_pickles_with_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / "config.json").write_text(json.dumps({"d_in": 8, "expansion_factor": 4}))
    torch.save({"cfg": Evil(), "state_dict": {}}, tmp_path / "weights.pt")
    with pytest.raises(
        CheckpointError, match="refused: the archive holds pickled objects other than tensors"
    ):
        saev.nn.load(tmp_path)


# Detection, folders, the Hub.


def test_unknown_folders_say_what_they_hold(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="a folder without a recognised SAE.*it holds notes.txt"):
        saev.nn.load(tmp_path)


def test_hub_folders_load_from_the_cache(tmp_path):
    from tests.conftest import hf_cache_put

    write_saelens(tmp_path / "lens", "topk")
    write_sparsify(tmp_path / "sp")
    hf_cache_put(
        "saev-test/saelens-layers",
        {f"layer_9/{name}": tmp_path / "lens" / name for name in ("cfg.json", "sae_weights.safetensors")},
    )
    hf_cache_put(
        "saev-test/sparsify-sae", {name: tmp_path / "sp" / name for name in ("cfg.json", "sae.safetensors")}
    )
    lens = saev.nn.load("hf://saev-test/saelens-layers/layer_9")
    assert torch.equal(lens.W_enc, saev.nn.load(tmp_path / "lens").W_enc)
    sp = saev.nn.load("hf://saev-test/sparsify-sae")
    assert torch.equal(sp.W_dec, saev.nn.load(tmp_path / "sp").W_dec)
    with pytest.raises(CheckpointError, match="none of cfg.json, config.json, sae.pt.*downloads are off"):
        saev.nn.load("hf://saev-test/saelens-layers/layer_3")


# saev convert.


def test_convert_command_verifies_and_never_overwrites(tmp_path, capsys):
    sae = random_sae(TopK(k=4), norm=True)
    checkpoints.dump(tmp_path / "sae.safetensors", sae)
    main(["convert", str(tmp_path / "sae.safetensors"), str(tmp_path / "lens"), "--to", "saelens"])
    out = capsys.readouterr()
    assert out.out.strip() == str(tmp_path / "lens")
    assert "(native) ->" in out.err and "largest code difference" in out.err
    assert formats.detect(tmp_path / "lens") == "saelens"
    with pytest.raises(SystemExit) as info:
        main(["convert", str(tmp_path / "sae.safetensors"), str(tmp_path / "lens"), "--to", "saelens"])
    assert info.value.code == 2 and "already exists; pass --overwrite" in capsys.readouterr().err
    main(["convert", str(tmp_path / "lens"), str(tmp_path / "back.safetensors")])  # format from the suffix
    assert conversion.compare(sae, saev.nn.load(tmp_path / "back.safetensors")).agrees


def test_convert_refuses_what_the_target_cannot_express(tmp_path, capsys):
    checkpoints.dump(tmp_path / "relu.safetensors", random_sae(Relu()))
    for to, needle in (("sparsify", "sparsify's SAEs are TopK with ReLU"), (None, "give --to")):
        args = ["convert", str(tmp_path / "relu.safetensors"), str(tmp_path / "out")]
        with pytest.raises(SystemExit) as info:
            main(args + (["--to", to] if to else []))
        assert info.value.code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_convert_removes_a_result_that_disagrees(tmp_path, monkeypatch):
    checkpoints.dump(tmp_path / "a.safetensors", random_sae(TopK(k=4)))
    real = formats.FORMATS["saelens"].write

    def broken(folder, sae):
        real(folder, sae)
        tensors = load_file(folder / "sae_weights.safetensors")
        tensors["b_enc"] += 1.0
        save_file(tensors, folder / "sae_weights.safetensors")

    monkeypatch.setitem(
        formats.FORMATS,
        "saelens",
        formats.FORMATS["saelens"].__class__("saelens", "", formats.FORMATS["saelens"].read, broken, True),
    )
    with pytest.raises(CheckpointError, match="disagrees with .* it was not kept"):
        conversion.convert(tmp_path / "a.safetensors", tmp_path / "lens", "saelens")
    assert not (tmp_path / "lens").exists()


def test_convert_overwrite_replaces_only_sae_files_and_never_its_source(tmp_path):
    sae = random_sae(TopK(k=4))
    checkpoints.dump(tmp_path / "a.safetensors", sae)
    folder = tmp_path / "out"
    conversion.convert(tmp_path / "a.safetensors", folder, "saelens")
    (folder / "notes.txt").write_text("mine")
    conversion.convert(tmp_path / "a.safetensors", folder, "sparsify", overwrite=True)
    # The SAELens weights are gone (the folder would read as SAELens), the user's file stays.
    assert formats.detect(folder) == "sparsify" and (folder / "notes.txt").read_text() == "mine"
    assert not (folder / "sae_weights.safetensors").exists()
    with pytest.raises(CheckpointError, match="is where .* is read from"):
        conversion.convert(folder, folder, "saelens", overwrite=True)
    assert formats.detect(folder) == "sparsify"

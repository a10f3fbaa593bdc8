"""Checkpoint loading for every reference header variant, bad inputs, and native round trips."""

import io
import json
import os

import pytest
import torch

import saev.nn
from saev.errors import CheckpointError
from saev.nn import ActNorm, SaeConfig, SparseAutoencoder
from tests.conftest import hf_cache_put
from tests.reference import D_SAE, D_VIT, HEADERS, load_reference, write_reference


def random_state(seed=0, d_vit=D_VIT, d_sae=D_SAE):
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_vit, d_sae, generator=g) * 0.3,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_vit, generator=g) * 0.3,
        "b_dec": torch.randn(d_vit, generator=g),
    }


def plain_codes(x, state, subtract):
    pre = (x - state["b_dec"] if subtract else x) @ state["W_enc"] + state["b_enc"]
    f = torch.relu(pre)
    return f, f @ state["W_dec"] + state["b_dec"]


@pytest.mark.parametrize("variant", list(HEADERS))
def test_every_header_variant_loads_with_its_forward(tmp_path, variant):
    path = tmp_path / "sae.pt"
    state = random_state()
    write_reference(path, HEADERS[variant], state)
    sae = saev.nn.load(path)
    assert sae.provenance.source == variant
    assert (sae.cfg.d_vit, sae.cfg.d_sae) == (D_VIT, D_SAE)
    x = torch.randn(3, 5, D_VIT) * 2
    x_hat, f_x, _ = sae(x)
    ref_f, ref_hat = plain_codes(x, state, subtract=variant != "V2")
    torch.testing.assert_close(f_x, ref_f, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x_hat, ref_hat, rtol=1e-6, atol=1e-6)


@pytest.mark.oracle
def test_codes_equal_reference_project_for_public_v0b_checkpoints(tmp_path):
    ref = load_reference()
    import saev_ref.nn

    path = tmp_path / "sae.pt"
    write_reference(path, HEADERS["V0b"], random_state(3))
    ours, theirs = saev.nn.load(path), saev_ref.nn.load(str(path))
    x = torch.randn(196, D_VIT) * 3
    ours_hat, ours_f, _ = ours(x)
    ref_hat, ref_f, _ = theirs(x)
    torch.testing.assert_close(ours_f, ref_f, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_hat, ref_hat, rtol=1e-6, atol=1e-6)
    assert ref is not None


def test_v2_topk_reproduces_reference_topk_without_relu(tmp_path):
    header = json.loads(json.dumps(HEADERS["V2"]))
    header["cfg"]["activation"] = {"cls": "TopK", "params": {"top_k": 3}}
    path = tmp_path / "sae.pt"
    state = random_state(1)
    write_reference(path, header, state)
    sae = saev.nn.load(path)
    x = torch.randn(6, D_VIT)
    pre = x @ state["W_enc"] + state["b_enc"]
    vals, idx = pre.topk(3, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, idx, vals)
    torch.testing.assert_close(sae.encode(x), expected)


@pytest.mark.oracle
def test_reference_project_reads_our_pt_dump(tmp_path):
    load_reference()
    import saev_ref.nn

    sae = SparseAutoencoder(SaeConfig(d_vit=D_VIT, d_sae=D_SAE, seed=4))
    path = tmp_path / "ours.pt"
    saev.nn.dump(path, sae)
    header = json.loads(path.read_bytes().split(b"\n", 1)[0])
    assert header["schema"] == 1 and header["cls"] == "Relu"
    # The reference 0.1.0 loader takes the V0b keys; the V1 cfg block is that minus sparsity keys.
    legacy = tmp_path / "legacy.pt"
    write_reference(
        legacy,
        header["cfg"] | {"sparsity_coeff": 4e-4, "ghost_grads": False},
        torch.load(io.BytesIO(path.read_bytes().split(b"\n", 1)[1]), weights_only=True),
    )
    theirs = saev_ref.nn.load(str(legacy))
    x = torch.randn(10, D_VIT)
    torch.testing.assert_close(theirs(x)[1], sae(x).f_x)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_is_bit_exact(tmp_path, suffix):
    sae = SparseAutoencoder(SaeConfig(d_vit=D_VIT, d_sae=D_SAE, seed=7))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    if suffix == ".safetensors":
        sae.set_normalization(ActNorm(torch.randn(D_VIT), 2.25))
        sae.provenance = saev.nn.Provenance(
            vit_family="clip", vit_ckpt="ViT-B-16/openai", layer=-2, tokens="patches"
        )
    path = tmp_path / f"sae{suffix}"
    saev.nn.dump(path, sae)
    back = saev.nn.load(path)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    assert back.cfg == sae.cfg
    if suffix == ".safetensors":
        assert torch.equal(back.act_mean, sae.act_mean) and float(back.act_scale) == 2.25
        assert back.provenance == sae.provenance


@pytest.mark.parametrize(
    "activation", [saev.nn.TopK(k=4), saev.nn.BatchTopK(k=4), saev.nn.JumpRelu(init_threshold=0.05)]
)
def test_native_format_keeps_every_architecture(tmp_path, activation):
    sae = SparseAutoencoder(SaeConfig(d_vit=D_VIT, d_sae=D_SAE, activation=activation, subtract_b_dec=False))
    if isinstance(activation, saev.nn.BatchTopK):
        sae.activation.threshold.fill_(0.25)
    saev.nn.dump(tmp_path / "s.safetensors", sae)
    back = saev.nn.load(tmp_path / "s.safetensors").eval()
    x = torch.randn(5, D_VIT)
    torch.testing.assert_close(back.encode(x), sae.eval().encode(x), rtol=0, atol=0)


def test_pt_dump_refuses_what_the_reference_format_cannot_express(tmp_path):
    sae = SparseAutoencoder(SaeConfig(d_vit=D_VIT, d_sae=D_SAE, activation=saev.nn.JumpRelu()))
    with pytest.raises(CheckpointError, match="safetensors"):
        saev.nn.dump(tmp_path / "x.pt", sae)
    assert not (tmp_path / "x.pt").exists()


def test_hf_uri_loads_offline_from_the_cache(tmp_path):
    path = tmp_path / "sae.pt"
    state = random_state(5)
    write_reference(path, HEADERS["V0b"], state)
    hf_cache_put("osunlp/SAE_TEST", {"sae.pt": path, "other.pt": path})
    for uri in ("hf://osunlp/SAE_TEST", "hf://osunlp/SAE_TEST/other.pt"):
        sae = saev.nn.load(uri)
        assert torch.equal(sae.W_enc, state["W_enc"])
    with pytest.raises(CheckpointError, match="cannot be downloaded now"):
        saev.nn.load("hf://osunlp/NOT_CACHED")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


BAD_INPUTS = {
    "missing": (None, "no such file"),
    "empty": (b"", "empty"),
    "not a checkpoint": (b"hello, this is a text file\nwith lines\n", "not a saev checkpoint"),
    "png": (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a saev checkpoint"),
    "header only": (json.dumps(HEADERS["V0b"]).encode() + b"\n", "truncated"),
    "unknown schema": ("unknown_schema", "unknown checkpoint schema 7"),
    "shape mismatch": ("shape_mismatch", "should have shape"),
    "truncated": ("truncated", "truncated or corrupt"),
    "evil pickle": ("evil", "refused"),
    "missing tensor": ("missing_tensor", "missing"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_clear_errors_naming_the_file(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    content, message = BAD_INPUTS[case]
    path = tmp_path / "bad.pt"
    if content == "unknown_schema":
        write_reference(path, {"schema": 7, "cfg": {}}, random_state())
    elif content == "shape_mismatch":
        write_reference(path, HEADERS["V0b"] | {"exp_factor": 8}, random_state())
    elif content == "truncated":
        write_reference(path, HEADERS["V0b"], random_state())
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "evil":
        write_reference(path, HEADERS["V0b"], {"W_enc": Evil()})
    elif content == "missing_tensor":
        state = random_state()
        del state["b_dec"]
        write_reference(path, HEADERS["V0b"], state)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        saev.nn.load(path)
    assert str(path) in str(info.value)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_safetensors_without_saev_metadata_is_rejected(tmp_path):
    from safetensors.torch import save_file

    save_file(random_state(), tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="not a saev SAE"):
        saev.nn.load(tmp_path / "plain.safetensors")

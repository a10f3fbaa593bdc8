"""Splicing an SAE into a running ViT: an empty edit changes nothing for any family, edits do what
they say, the decoder delta is the SAE's own decode, and bad requests are refused."""

import pytest
import timm
import torch
from safetensors.torch import save_file

import saev.nn
from saev.activations import make_img_transform, make_vit
from saev.errors import ConfigError, ModelError
from saev.normalization import ActNorm
from saev.steering import Edit, SplicedVit, apply_edits, parse_edit
from tests.conftest import photo
from tests.test_family_hf import CASES, save


def random_sae(d_vit: int, layer: int, tokens: str = "patches", seed: int = 0) -> saev.nn.SparseAutoencoder:
    """A TopK SAE with normalisation statistics, as `saev train` writes them."""
    cfg = saev.nn.SaeConfig(
        d_vit=d_vit, d_sae=4 * d_vit, activation=saev.nn.TopK(k=8), subtract_b_dec=False, seed=seed
    )
    sae = saev.nn.SparseAutoencoder(cfg, saev.nn.Provenance(layer=layer, tokens=tokens))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(cfg.d_sae, generator=g) * 0.1)
    sae.set_normalization(ActNorm(torch.randn(d_vit, generator=g) * 0.1, 2.5))
    return sae.eval()


def family_models(tmp_path_factory, tiny_clip) -> dict:
    tmp = tmp_path_factory.mktemp("models")
    timm_model = timm.create_model("vit_tiny_patch16_224.augreg_in21k", pretrained=False)
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, tmp / "t.safetensors")
    case = CASES["dinov2_with_registers"]
    return {
        "builtin": ("builtin", "shapes-vit", True),
        "clip": ("clip", tiny_clip, True),
        "dinov2": ("dinov2", "dinov2_vits14_reg", False),
        "timm": ("timm", f"vit_tiny_patch16_224.augreg_in21k/{tmp / 't.safetensors'}", True),
        "hf": ("hf", save(tmp / "hf", case.model(), case.processor()), True),
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_clip):
    return family_models(tmp_path_factory, tiny_clip)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["builtin", "clip", "dinov2", "timm", "hf", "siglip"])
@pytest.mark.parametrize("tokens", ["patches", "all"])
def test_an_empty_edit_reproduces_the_model_exactly(models, name, tokens):
    torch.manual_seed(0)
    if name == "siglip":
        family, ckpt, pretrained = "siglip", "ViT-B-16-SigLIP/none", False
    else:
        family, ckpt, pretrained = models[name]
    vit = make_vit(family, ckpt, pretrained=pretrained)
    if tokens == "all" and not vit.layout.has_cls:
        pytest.skip("no [CLS] token")
    x = (
        torch.randn(2, 3, 224, 224)
        if name == "siglip"
        else make_img_transform(family, ckpt)(photo("rocket"))[None]
    )
    spliced = SplicedVit(vit, random_sae(vit.d_vit, -2, tokens))
    with torch.inference_mode():
        expected = vit.run_to(x, -1)
        output = vit(x)
    final = spliced(x)
    torch.testing.assert_close(final, expected, rtol=0, atol=0)
    with torch.inference_mode():
        head = vit.head(final)
    for got, want in zip(_tensors(head), _tensors(output), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # An edit that changes nothing is exact too; a real edit and the replace mode change the output.
    prefix = spliced.prefix(x)
    same = spliced.edit(prefix, [Edit(0, "scale", 1.0)])
    torch.testing.assert_close(spliced.finish(spliced.tokens_with(prefix, same)), expected, rtol=0, atol=0)
    latent = int(prefix.codes_BNS.sum((0, 1)).argmax())
    edited = spliced.edit(prefix, [Edit(latent, "set", 0.0)])
    assert not torch.equal(spliced.finish(spliced.tokens_with(prefix, edited)), expected)
    assert not torch.equal(spliced.finish(spliced.tokens_with(prefix, mode="replace")), expected)


def _tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, tuple):
        return [t for t in output if isinstance(t, torch.Tensor)]
    return [v for v in output.values() if isinstance(v, torch.Tensor)]


def test_edits_change_only_the_tokens_the_sae_reads():
    vit = make_vit("builtin", "shapes-vit")
    x = make_img_transform("builtin", "shapes-vit")(photo("chelsea"))[None]
    spliced = SplicedVit(vit, random_sae(vit.d_vit, 1, "patches"))
    prefix = spliced.prefix(x)
    codes = spliced.edit(prefix, [Edit(3, "set", 5.0)], patches=[0, 9])
    tokens = spliced.tokens_with(prefix, codes)
    changed = (tokens != prefix.tokens_BTD).any(-1)[0]
    assert changed.nonzero().flatten().tolist() == [1, 10]  # [CLS] is token 0; patches 0 and 9 follow
    delta = spliced.decode_delta(prefix.codes_BNS, codes)
    replaced = spliced.tokens_with(prefix, mode="replace")
    with torch.inference_mode():
        expected = spliced.sae.decode(codes) - spliced.sae.decode(prefix.codes_BNS)
        reconstruction = spliced.sae.decode(prefix.codes_BNS)
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(replaced[:, 1:], reconstruction)
    assert torch.equal(replaced[:, 0], prefix.tokens_BTD[:, 0])


@pytest.mark.parametrize(
    "text,edit",
    [
        ("686=-1x", Edit(686, "set", -1.0, True)),
        ("12=0", Edit(12, "set", 0.0)),
        ("5=+3", Edit(5, "add", 3.0)),
        ("5=+-0.5x", Edit(5, "add", -0.5, True)),
        ("7=*0.5", Edit(7, "scale", 0.5)),
        (" 3 = 2e-1 ", Edit(3, "set", 0.2)),
    ],
)
def test_edit_syntax(text, edit):
    assert parse_edit(text) == edit
    assert parse_edit(str(edit)) == edit


@pytest.mark.parametrize("text", ["686", "x=1", "5=", "5=1y", "5=*2x", "-3=1", "5=nan", "5=inf"])
def test_bad_edits_are_refused(text):
    with pytest.raises(ConfigError):
        parse_edit(text)


def test_edits_against_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(2, 5, 6, generator=g))
    max_S = torch.arange(1, 7).float()
    eligible = torch.tensor([True, True, False, True, True])
    edits = [Edit(1, "set", -1.0, True), Edit(2, "add", 0.5), Edit(3, "scale", 2.0), Edit(1, "add", 1.0)]
    got = apply_edits(codes, edits, where="active", eligible_N=eligible, max_S=max_S)
    want = codes.clone()
    for b in range(2):
        for n in range(5):
            for e in edits:
                if not eligible[n] or codes[b, n, e.latent] <= 0:  # active before any edit
                    continue
                v = e.value * float(max_S[e.latent]) if e.relative else e.value
                cur = want[b, n, e.latent]
                want[b, n, e.latent] = {"set": v, "add": cur + v, "scale": cur * v}[e.op]
    torch.testing.assert_close(got, want)
    with pytest.raises(ConfigError, match="largest activation"):
        apply_edits(codes, [Edit(1, "set", 1.0, True)])


def test_bad_splices_are_refused():
    vit = make_vit("builtin", "shapes-vit")
    x = torch.randn(1, 3, 128, 128)
    with pytest.raises(ConfigError, match="trained on block -2, not block 0 of 4"):
        SplicedVit(vit, random_sae(vit.d_vit, -2), layer=0)
    SplicedVit(vit, random_sae(vit.d_vit, -2), layer=0, force=True)
    SplicedVit(vit, random_sae(vit.d_vit, -2), layer=2)  # the same block as -2 of 4
    with pytest.raises(ConfigError, match="reads 64-dim"):
        SplicedVit(vit, random_sae(64, -2))
    no_layer = random_sae(vit.d_vit, -2)
    no_layer.provenance = saev.nn.Provenance()
    with pytest.raises(ConfigError, match="does not record its layer"):
        SplicedVit(vit, no_layer)
    with pytest.raises(ModelError, match="out of range"):
        SplicedVit(vit, random_sae(vit.d_vit, -2), layer=7, force=True)
    spliced = SplicedVit(vit, random_sae(vit.d_vit, -2))
    prefix = spliced.prefix(x)
    with pytest.raises(ConfigError, match=r"latents \[4096\]"):
        spliced.edit(prefix, [Edit(4096, "set", 0.0)])
    with pytest.raises(ConfigError, match=r"patches \[64\] out of range"):
        spliced.edit(prefix, [Edit(1, "set", 0.0)], patches=[64])

"""ViT wrappers, transforms and RecordedVisionTransformer, on tiny real-architecture models."""

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import saev.activations
from saev.activations import RecordedVisionTransformer, make_img_transform, make_vit, visible_crop
from saev.errors import ModelError
from tests.conftest import TINY_CLIP_HF, photo
from tests.reference import load_reference


@pytest.fixture(scope="module")
def clip_vit(tiny_clip):
    return make_vit("clip", tiny_clip)


@pytest.fixture(scope="module")
def clip_batch(tiny_clip):
    transform = make_img_transform("clip", tiny_clip)
    return torch.stack([transform(photo(n)) for n in ("astronaut", "chelsea", "coffee")])


def test_layers_come_back_in_the_order_given(clip_vit, clip_batch):
    rec = RecordedVisionTransformer(clip_vit, 196, True, [3, -4, 1])
    _, acts = rec(clip_batch)
    assert acts.shape == (3, 3, 197, 64)
    for i, layer in enumerate([3, 0, 1]):
        _, single = RecordedVisionTransformer(clip_vit, 196, True, [layer])(clip_batch)
        torch.testing.assert_close(acts[:, i], single[:, 0], rtol=0, atol=0)
    assert not torch.equal(acts[:, 0], acts[:, 2])


def test_acts_are_the_residual_stream_after_each_block(clip_vit, clip_batch):
    visual = clip_vit.model
    x = visual._embeds(clip_batch)
    expected = []
    for block in visual.transformer.resblocks:
        x = block(x)
        expected.append(x)
    _, acts = RecordedVisionTransformer(clip_vit, 196, True, [0, 2, -1])(clip_batch)
    for i, b in enumerate([0, 2, 3]):
        torch.testing.assert_close(acts[:, i], expected[b], rtol=1e-5, atol=1e-5)
    _, no_cls = RecordedVisionTransformer(clip_vit, 196, False, [2])(clip_batch)
    torch.testing.assert_close(no_cls[:, 0], expected[2][:, 1:], rtol=1e-5, atol=1e-5)


def test_every_call_returns_a_fresh_tensor(clip_vit, clip_batch):
    rec = RecordedVisionTransformer(clip_vit, 196, True, [-2])
    _, first = rec(clip_batch[:1])
    kept = first.clone()
    _, second = rec(clip_batch[1:2])
    assert torch.equal(first, kept)
    assert not torch.equal(first, second)
    assert first.data_ptr() != second.data_ptr()


def test_record_skips_blocks_after_the_deepest_layer(clip_vit, clip_batch):
    rec = RecordedVisionTransformer(clip_vit, 196, True, [1, 0])
    calls = []
    handle = clip_vit.blocks[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        acts = rec.record(clip_batch)
    finally:
        handle.remove()
    assert calls == []
    torch.testing.assert_close(acts, rec(clip_batch)[1], rtol=0, atol=0)
    assert not clip_vit.blocks[0]._forward_hooks  # hooks are removed after each call


@pytest.mark.oracle
def test_matches_reference_recording_value_for_value(tiny_clip_dir, clip_batch):
    load_reference()
    import saev_ref.activations as ref

    ckpt = f"hf-hub:{TINY_CLIP_HF}"
    ref_vit = ref.RecordedVisionTransformer(ref.make_vit("clip", ckpt), 196, True, [1, 2])
    ours = RecordedVisionTransformer(make_vit("clip", ckpt), 196, True, [1, 2])
    ref_transform, our_transform = (
        ref.make_img_transform("clip", ckpt),
        make_img_transform("clip", ckpt),
    )
    for name in ("astronaut", "rocket", "camera"):
        img = photo(name).convert("RGB")
        x_ref, x_ours = ref_transform(img)[None], our_transform(img)[None]
        torch.testing.assert_close(x_ours, x_ref, rtol=0, atol=0)
        with torch.inference_mode():
            torch.testing.assert_close(ours(x_ours)[1], ref_vit(x_ref)[1], rtol=0, atol=0)


def test_clip_transform_is_open_clips(tiny_clip):
    _, expected = open_clip.create_model_from_pretrained(tiny_clip)
    ours = make_img_transform("clip", tiny_clip)
    for name in ("coffee", "camera", "hubble_deep_field"):
        img = photo(name)
        torch.testing.assert_close(ours(img), expected(img), rtol=0, atol=0)


@pytest.mark.parametrize("family,ckpt_fixture", [("clip", "tiny_clip"), ("dinov2", None)])
def test_visible_crop_is_what_the_model_sees(request, family, ckpt_fixture):
    ckpt = request.getfixturevalue(ckpt_fixture) if ckpt_fixture else "dinov2_vits14_reg"
    transform = make_img_transform(family, ckpt)
    img = photo("rocket")  # 640x427: not square, so a squashed crop would be wrong
    crop = visible_crop(transform, img)
    assert crop.size == (224, 224)
    x = transform(img)
    mean = torch.tensor(transform.transforms[-1].mean).view(3, 1, 1)
    std = torch.tensor(transform.transforms[-1].std).view(3, 1, 1)
    pixels = torch.from_numpy(np.array(crop)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close((pixels - mean) / std, x, rtol=0, atol=1e-5)


def test_dinov2_drops_registers_and_uses_public_preprocessing():
    vit = make_vit("dinov2", "dinov2_vits14_reg", pretrained=False)
    assert vit.layout.n_prefix == 5 and vit.layout.n_patches == 256
    transform = make_img_transform("dinov2", "dinov2_vits14_reg")
    x = transform(photo("chelsea"))[None]
    assert x.shape == (1, 3, 224, 224)
    seen = {}
    handle = vit.blocks[-2].register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
    try:
        _, acts = RecordedVisionTransformer(vit, 256, True, [-2])(x)
    finally:
        handle.remove()
    assert acts.shape == (1, 1, 257, 384)
    torch.testing.assert_close(acts[0, 0, 0], seen["out"][0, 0])
    torch.testing.assert_close(acts[0, 0, 1:], seen["out"][0, 5:])


def test_dinov2_position_embedding_follows_the_official_interpolation():
    import timm
    import torch.nn.functional as F

    native = timm.create_model("vit_small_patch14_dinov2", pretrained=False)
    native_pos = native.pos_embed.detach().clone()
    saev.activations.families.dinov2.resize(native, 224)
    patch = native_pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    official = F.interpolate(patch, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic", antialias=False)
    official = official.permute(0, 2, 3, 1).reshape(1, 256, -1)
    torch.testing.assert_close(native.pos_embed[:, 1:], official)
    torch.testing.assert_close(native.pos_embed[:, :1], native_pos[:, :1])


@pytest.mark.slow
def test_siglip_has_no_cls_token():
    vit = make_vit("siglip", "ViT-B-16-SigLIP/none", pretrained=False)
    with pytest.raises(ModelError, match="no \\[CLS\\] token"):
        RecordedVisionTransformer(vit, 196, True, [-2])
    _, acts = RecordedVisionTransformer(vit, 196, False, [-2])(torch.randn(1, 3, 224, 224))
    assert acts.shape == (1, 1, 196, 768)


@pytest.mark.parametrize(
    "family,ckpt,kwargs,message",
    [
        ("vgg", "x", {}, "unknown ViT family 'vgg'"),
        ("clip", "ViT-B-16", {}, "expected ARCH/PRETRAINED"),
        ("dinov2", "dinov3_vitb16", {}, "expected a name like dinov2_vitb14"),
    ],
)
def test_bad_model_names(family, ckpt, kwargs, message):
    with pytest.raises(ModelError, match=message):
        make_vit(family, ckpt, **kwargs)


def test_bad_recording_requests(clip_vit):
    with pytest.raises(ModelError, match="out of range"):
        RecordedVisionTransformer(clip_vit, 196, True, [4])
    with pytest.raises(ModelError, match="out of range"):
        RecordedVisionTransformer(clip_vit, 196, True, [-5])
    with pytest.raises(
        ModelError, match="sees 196 patches per image \\(14x14 grid\\), not n_patches_per_img=256"
    ):
        RecordedVisionTransformer(clip_vit, 256, True, [0])
    with pytest.raises(ModelError, match="empty"):
        RecordedVisionTransformer(clip_vit, 196, True, [])


def test_missing_weights_is_a_clear_error():
    with pytest.raises(ModelError, match="ViT-B-16/openai"):
        make_vit("clip", "ViT-B-16/openai")


def test_accepts_grayscale_and_rgba_images(tiny_clip):
    transform = make_img_transform("clip", tiny_clip)
    for img in (photo("camera"), Image.new("RGBA", (50, 80), (10, 20, 30, 0))):
        assert transform(img).shape == (3, 224, 224)


@pytest.mark.slow
@pytest.mark.parametrize(
    "family,ckpt",
    [
        ("clip", "tiny_clip"),
        ("siglip", "ViT-B-16-SigLIP/none"),
        ("dinov2", "dinov2_vits14_reg"),
        ("builtin", "shapes-vit"),
    ],
)
def test_running_to_a_block_and_on_from_it_is_the_models_own_forward(request, family, ckpt):
    ckpt = request.getfixturevalue(ckpt) if ckpt == "tiny_clip" else ckpt
    torch.manual_seed(0)
    vit = make_vit(family, ckpt, pretrained=family == "builtin")
    # SigLIP's preprocessing needs its config from the Hub: a random image stands in offline.
    x = (
        torch.randn(1, 3, 224, 224)
        if family == "siglip"
        else make_img_transform(family, ckpt)(photo("rocket"))[None]
    )
    with torch.inference_mode():
        expected = vit(x)
        for layer in (0, -2, -1):
            tokens = vit.run_to(x, layer)
            assert tokens.shape == (1, vit.layout.n_prefix + vit.layout.n_patches, vit.d_vit)
            has_cls = vit.layout.has_cls
            recorded = RecordedVisionTransformer(vit, vit.layout.n_patches, has_cls, [layer]).record(x)
            torch.testing.assert_close(tokens[:, vit.layout.index(has_cls)], recorded[:, 0], rtol=0, atol=0)
            torch.testing.assert_close(vit.run_from(tokens, layer), expected, rtol=1e-5, atol=1e-5)
        # A change spliced in after a block reaches the output.
        tokens = vit.run_to(x, -2)
        assert not torch.allclose(vit.run_from(tokens * 1.5, -2), expected)
    with pytest.raises(ModelError, match="out of range"):
        vit.run_to(x, len(vit.blocks))


def test_the_family_table_in_the_docs_is_the_registry():
    import pathlib
    import re

    from saev.activations.families import markdown_table

    docs = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "vit-families.md").read_text()
    table = re.search(r"<!-- families:start -->\n(.*?)\n<!-- families:end -->", docs, re.S).group(1)
    assert table == markdown_table()

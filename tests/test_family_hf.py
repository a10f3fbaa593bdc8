"""The `hf` ViT family: Hugging Face `transformers` vision models, offline, tiny and random, saved to
folders with `save_pretrained` (and one put in the offline hub cache)."""

import dataclasses
import pathlib
import pickle
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import transformers as tf

from saev.activations import RecordedVisionTransformer, make_img_transform, make_vit, visible_crop
from saev.activations.families import hf
from saev.errors import ModelError
from tests.conftest import hf_cache_put, photo

TINY = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}
TEXT = {
    **TINY,
    "num_hidden_layers": 1,
    "vocab_size": 64,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
DINOV2 = {
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "mlp_ratio": 2,
    "patch_size": 14,
}
PHOTOS = ("rocket", "chelsea", "camera", "colorwheel")
"""640x427 (resized to 95x64, then 11 px cropped: floor and round differ), 451x300, grayscale
512x512, 371x370."""


@dataclasses.dataclass(frozen=True)
class Case:
    model: Callable[[], torch.nn.Module]
    processor: Callable[[], Any]
    """The HF processor saved with the model, from its PIL ("slow") backend."""
    marker: str
    """A parameter of the vision model, set to 0.25 before saving."""
    grid: tuple[int, int]
    has_cls: bool
    n_registers: int = 0


CASES = {
    # Non-square crop (56x84): position embeddings interpolated to a 4x6 grid at run time.
    "dinov2": Case(
        lambda: tf.Dinov2Model(tf.Dinov2Config(**DINOV2, image_size=56)),
        lambda: tf.BitImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 84}),
        "embeddings.cls_token",
        (4, 6),
        True,
    ),
    "dinov2_with_registers": Case(
        lambda: tf.Dinov2WithRegistersModel(
            tf.Dinov2WithRegistersConfig(**DINOV2, image_size=56, num_register_tokens=4)
        ),
        lambda: tf.BitImageProcessorPil(size={"shortest_edge": 61}, crop_size={"height": 56, "width": 56}),
        "embeddings.register_tokens",
        (4, 4),
        True,
        4,
    ),
    # DINOv3's processor squashes to height x width; rotary embeddings follow the 4x6 grid.
    "dinov3_vit": Case(
        lambda: tf.DINOv3ViTModel(
            tf.DINOv3ViTConfig(**TINY, image_size=64, patch_size=16, num_register_tokens=4)
        ),
        lambda: tf.DINOv3ViTImageProcessor(size={"height": 64, "width": 96}),
        "embeddings.register_tokens",
        (4, 6),
        True,
        4,
    ),
    # A full SigLIP (as fixed-resolution SigLIP 2 checkpoints are, with bilinear resizing).
    "siglip": Case(
        lambda: tf.SiglipModel(
            tf.SiglipConfig(text_config=TEXT, vision_config={**TINY, "image_size": 64, "patch_size": 16})
        ),
        lambda: tf.SiglipImageProcessorPil(size={"height": 64, "width": 64}, resample=2),
        "head.probe",
        (4, 4),
        False,
    ),
    # A vision tower alone, without the attention-pooling head.
    "siglip_vision_model": Case(
        lambda: tf.SiglipVisionModel(
            tf.SiglipVisionConfig(**TINY, image_size=64, patch_size=16, vision_use_head=False)
        ),
        lambda: tf.SiglipImageProcessorPil(size={"height": 64, "width": 64}),
        "embeddings.position_embedding.weight",
        (4, 4),
        False,
    ),
    "clip": Case(
        lambda: tf.CLIPModel(
            tf.CLIPConfig(
                text_config=TEXT,
                vision_config={**TINY, "image_size": 64, "patch_size": 16},
                projection_dim=16,
            )
        ),
        lambda: tf.CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
        "embeddings.class_embedding",
        (4, 4),
        True,
    ),
    "clip_vision_model": Case(
        lambda: tf.CLIPVisionModel(tf.CLIPVisionConfig(**TINY, image_size=56, patch_size=14)),
        lambda: tf.CLIPImageProcessorPil(size={"shortest_edge": 61}, crop_size={"height": 56, "width": 56}),
        "embeddings.class_embedding",
        (4, 4),
        True,
    ),
}


def save(folder: pathlib.Path, model: torch.nn.Module, processor: Any = None) -> str:
    model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """Every case saved to its own folder, with its marker parameter set to 0.25."""
    tf.utils.logging.disable_progress_bar()
    out = {}
    for name, case in CASES.items():
        torch.manual_seed(0)
        model = case.model()
        vision = getattr(model, "vision_model", model)
        with torch.no_grad():
            vision.get_parameter(case.marker).fill_(0.25)
            # Random DINO position embeddings are tiny; spread them so patches differ.
            for param_name, param in vision.named_parameters():
                if "position_embeddings" in param_name:
                    param.normal_(0, 0.5)
        out[name] = save(tmp_path_factory.mktemp(name), model, case.processor())
    return out


def reference(folder: str) -> tuple[Any, float]:
    """HF's own preprocessing of the checkpoint and how close ours must be.

    DINOv3's processor exists only for the torchvision backend and resizes float tensors; ours
    resizes the 8-bit image with Pillow as the PIL processors do, within a gray level of it.
    """
    processor = tf.AutoImageProcessor.from_pretrained(folder, backend="pil")
    if isinstance(processor, tf.DINOv3ViTImageProcessor):
        return processor, 0.02
    return processor, 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_layout_transform_and_recorded_shapes(folders, name, caplog):
    case, folder = CASES[name], folders[name]
    vit = make_vit("hf", folder, pretrained=True)
    assert "lacks weights" not in caplog.text  # full CLIP/SigLIP checkpoints fill the whole tower
    assert vit.layout.grid == case.grid
    assert vit.layout.has_cls == case.has_cls and vit.layout.n_registers == case.n_registers
    assert vit.d_vit == 32 and len(vit.blocks) == 3
    assert not vit.training and all(p.dtype == torch.float32 for p in vit.parameters())
    # pretrained=True loads the saved weights; pretrained=False is the same architecture, random.
    assert torch.all(vit.model.get_parameter(case.marker) == 0.25)
    random = make_vit("hf", folder, pretrained=False)
    assert random.layout == vit.layout and not torch.all(random.model.get_parameter(case.marker) == 0.25)

    transform = make_img_transform("hf", folder)
    processor, atol = reference(folder)
    patch = vit.model.config.patch_size
    height, width = case.grid[0] * patch, case.grid[1] * patch
    for img_name in PHOTOS:
        img = photo(img_name)
        x = transform(img)
        assert x.shape == (3, height, width)
        expected = torch.as_tensor(np.asarray(processor(img, return_tensors="np")["pixel_values"][0]))
        torch.testing.assert_close(x, expected, rtol=0, atol=atol)
        # The leading PIL steps are exactly the pixels behind the patches.
        crop = visible_crop(transform, img)
        assert crop.size == (width, height) and crop.mode == "RGB"
        mean = torch.tensor(transform.transforms[-1].mean).view(3, 1, 1)
        std = torch.tensor(transform.transforms[-1].std).view(3, 1, 1)
        pixels = torch.from_numpy(np.array(crop)).permute(2, 0, 1).float() / 255
        torch.testing.assert_close((pixels - mean) / std, x, rtol=0, atol=1e-5)

    # Data-loader workers get the transform pickled.
    x = transform(photo("rocket"))[None]
    torch.testing.assert_close(pickle.loads(pickle.dumps(transform))(photo("rocket")), x[0], rtol=0, atol=0)
    seen = {}
    handle = vit.blocks[1].register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
    try:
        with torch.inference_mode():
            _, acts = RecordedVisionTransformer(vit, case.grid[0] * case.grid[1], case.has_cls, [1])(x)
    finally:
        handle.remove()
    out = seen["out"][0] if isinstance(seen["out"], tuple) else seen["out"]
    n_patches = case.grid[0] * case.grid[1]
    assert acts.shape == (1, 1, int(case.has_cls) + n_patches, 32)
    assert out.shape == (1, int(case.has_cls) + case.n_registers + n_patches, 32)
    if case.has_cls:
        torch.testing.assert_close(acts[0, 0, 0], out[0, 0])  # [CLS]
    torch.testing.assert_close(acts[0, 0, int(case.has_cls) :], out[0, -n_patches:])  # registers dropped


@pytest.mark.slow
def test_dinov3_transform_matches_pillow_processing(folders):
    """Ours is HF's PIL processing of DINOv3's processor config exactly (its own processor resizes
    float tensors instead; see `reference`)."""
    ours = make_img_transform("hf", folders["dinov3_vit"])
    pil = tf.BitImageProcessorPil(
        size={"height": 64, "width": 96},
        resample=2,
        do_center_crop=False,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    for img_name in PHOTOS:
        img = photo(img_name)
        expected = torch.as_tensor(pil(img, return_tensors="np")["pixel_values"][0])
        torch.testing.assert_close(ours(img), expected, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_splits_at_any_block(folders, name):
    vit = make_vit("hf", folders[name], pretrained=True)
    x = make_img_transform("hf", folders[name])(photo("chelsea"))[None]
    n_tokens = int(vit.layout.has_cls) + vit.layout.n_registers + vit.layout.n_patches
    with torch.inference_mode():
        expected = vit(x)
        assert expected.last_hidden_state.shape == (1, n_tokens, 32)
        if name == "siglip_vision_model":
            assert expected.pooler_output is None  # no attention-pooling head
        else:
            assert expected.pooler_output.shape == (1, 32)
        for layer in (0, 1, -1):
            tokens = vit.run_to(x, layer)
            assert tokens.shape == (1, n_tokens, 32)
            torch.testing.assert_close(vit.run_from(tokens, layer), expected, rtol=1e-5, atol=1e-5)
        # A change spliced in after a block reaches the output.
        changed = vit.run_from(vit.run_to(x, 0) * 1.5, 0).last_hidden_state
        assert not torch.allclose(changed, expected.last_hidden_state)


@pytest.mark.slow
def test_loads_a_hub_id_from_the_offline_cache(folders):
    folder = pathlib.Path(folders["dinov2_with_registers"])
    files = ("config.json", "model.safetensors", "preprocessor_config.json")
    hf_cache_put("saev-test/tiny-dinov2-with-registers", {f: folder / f for f in files})
    vit = make_vit("hf", "saev-test/tiny-dinov2-with-registers")
    assert vit.name == "hf/saev-test/tiny-dinov2-with-registers"
    assert vit.layout.n_registers == 4 and torch.all(vit.model.embeddings.register_tokens == 0.25)
    transform = make_img_transform("hf", "saev-test/tiny-dinov2-with-registers")
    assert transform(photo("coffee")).shape == (3, 56, 56)


@pytest.mark.slow
def test_clear_errors(folders, tmp_path, monkeypatch):
    with pytest.raises(
        ModelError, match="'facebook/dinov2-base' is not a local folder and is not in the Hugging Face cache"
    ):
        make_vit("hf", "facebook/dinov2-base")
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        make_img_transform("hf", "facebook/dinov2-base")
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        make_vit("hf", str(tmp_path / "missing"))

    vit_folder = save(
        tmp_path / "vit",
        tf.ViTModel(tf.ViTConfig(**TINY, image_size=32, patch_size=16)),
        tf.ViTImageProcessorPil(),
    )
    with pytest.raises(
        ModelError, match="model type 'vit'.*supported model types: dinov2, dinov2_with_registers"
    ):
        make_vit("hf", vit_folder, pretrained=False)
    with pytest.raises(ModelError, match="model type 'vit'"):
        make_img_transform("hf", vit_folder)

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text('{"model_type": "not-a-model"}')
    with pytest.raises(
        ModelError, match="`not-a-model` but Transformers does not recognize.*supports model types"
    ):
        make_vit("hf", str(unknown))

    naflex = tmp_path / "naflex"
    tf.Siglip2Config().save_pretrained(naflex)
    with pytest.raises(ModelError, match="NaFlex SigLIP 2.*google/siglip2-base-patch16-224"):
        make_vit("hf", str(naflex), pretrained=False)

    no_weights = tmp_path / "no-weights"
    tf.Dinov2Config(**DINOV2, image_size=56).save_pretrained(no_weights)
    CASES["dinov2"].processor().save_pretrained(no_weights)
    assert make_vit("hf", str(no_weights), pretrained=False).layout.grid == (4, 6)
    with pytest.raises(ModelError, match="no-weights'.*cannot load the weights"):
        make_vit("hf", str(no_weights))

    no_processor = save(tmp_path / "no-processor", CASES["dinov2"].model())
    for call in (lambda: make_vit("hf", no_processor), lambda: make_img_transform("hf", no_processor)):
        with pytest.raises(ModelError, match="no image processor config \\(preprocessor_config.json\\)"):
            call()

    # A processor whose output size depends on the image has no fixed grid.
    no_crop = save(
        tmp_path / "no-crop", CASES["dinov2"].model(), tf.BitImageProcessorPil(do_center_crop=False)
    )
    with pytest.raises(ModelError, match="size depends on the input"):
        make_vit("hf", no_crop, pretrained=False)
    # CLIP's position embeddings only fit the size they were trained for.
    wrong_size = save(
        tmp_path / "wrong-size",
        CASES["clip_vision_model"].model(),
        tf.CLIPImageProcessorPil(crop_size={"height": 84, "width": 84}),
    )
    with pytest.raises(
        ModelError, match="gives 84x84 images, but the model's position embeddings are for 56x56"
    ):
        make_vit("hf", wrong_size, pretrained=False)
    # A centre crop without height and width is refused up front, not at the first image.
    crop_edge = types.SimpleNamespace(
        do_resize=True, size={"height": 64, "width": 64}, do_center_crop=True, crop_size={"shortest_edge": 56}
    )
    with pytest.raises(ModelError, match="unsupported image processor centre crop"):
        hf.make_transform(crop_edge, "crop-edge")

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelError, match="needs transformers: pip install -e '\\.\\[hf\\]'"):
        make_vit("hf", folders["dinov2"])

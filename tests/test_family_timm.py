"""The `timm` ViT family: any timm vision transformer by name, offline with random weights."""

import pytest
import timm
import timm.data
import torch
from safetensors.torch import save_file

from saev.activations import RecordedVisionTransformer, make_img_transform, make_vit, visible_crop
from saev.errors import ModelError
from tests.conftest import photo

TINY = "vit_tiny_patch16_224.augreg_in21k"
REGISTERS = "vit_small_patch14_reg4_dinov2.lvd142m"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,grid,n_registers,size",
    [(TINY, (14, 14), 0, 224), (REGISTERS, (37, 37), 4, 518)],
)
def test_layout_transform_and_recorded_shapes(name, grid, n_registers, size):
    vit = make_vit("timm", name, pretrained=False)
    assert vit.layout.grid == grid and vit.layout.n_registers == n_registers and vit.layout.has_cls
    transform = make_img_transform("timm", name)
    img = photo("rocket")  # 640x427
    x = transform(img)[None]
    assert x.shape == (1, 3, size, size)
    # The transform is timm's own evaluation transform for the model's data config.
    expected = timm.data.create_transform(**timm.data.resolve_model_data_config(vit.model), is_training=False)
    torch.testing.assert_close(x[0], expected(img), rtol=0, atol=0)
    assert visible_crop(transform, img).size == (size, size)
    seen = {}
    handle = vit.blocks[1].register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
    try:
        with torch.inference_mode():
            _, acts = RecordedVisionTransformer(vit, grid[0] * grid[1], True, [1])(x)
    finally:
        handle.remove()
    assert acts.shape == (1, 1, 1 + grid[0] * grid[1], vit.d_vit)
    torch.testing.assert_close(acts[0, 0, 0], seen["out"][0, 0])  # [CLS]
    torch.testing.assert_close(acts[0, 0, 1:], seen["out"][0, 1 + n_registers :])  # registers dropped


def test_splits_at_any_block_and_keeps_its_classifier():
    torch.manual_seed(0)
    vit = make_vit("timm", TINY, pretrained=False)
    x = make_img_transform("timm", TINY)(photo("chelsea"))[None]
    with torch.inference_mode():
        logits = vit(x)
        assert logits.shape == (1, 21843)
        for layer in (0, 5, -1):
            torch.testing.assert_close(
                vit.run_from(vit.run_to(x, layer), layer), logits, rtol=1e-5, atol=1e-5
            )


def test_local_weights_file_and_clear_errors(tmp_path):
    model = timm.create_model(TINY, pretrained=False)
    with torch.no_grad():
        model.cls_token.fill_(0.25)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    vit = make_vit("timm", f"{TINY}/{tmp_path / 'w.safetensors'}")
    assert torch.all(vit.model.cls_token == 0.25)
    with pytest.raises(ModelError, match="timm has no model 'vit_nonexistent'"):
        make_vit("timm", "vit_nonexistent")
    with pytest.raises(ModelError, match="not a timm VisionTransformer"):
        make_vit("timm", "resnet18", pretrained=False)
    with pytest.raises(ModelError, match="cannot build timm model"):
        make_vit("timm", f"{TINY}/{tmp_path / 'missing.safetensors'}")

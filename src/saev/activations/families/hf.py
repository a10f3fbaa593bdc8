"""Vision transformers through Hugging Face `transformers`: DINOv2 (with or without registers),
DINOv3, SigLIP and fixed-resolution SigLIP 2, and CLIP.

`ckpt` is a Hugging Face hub id (`facebook/dinov2-base`, `facebook/dinov2-with-registers-small`,
`facebook/dinov3-vits16-pretrain-lvd1689m`, `google/siglip-base-patch16-224`,
`google/siglip2-base-patch16-224`, `openai/clip-vit-base-patch16`), loaded through the Hugging Face
cache, or a local folder written by `model.save_pretrained(folder)` and
`image_processor.save_pretrained(folder)`. The model type comes from the checkpoint's config; a
full CLIP or SigLIP checkpoint gives its vision tower. NaFlex SigLIP 2 (model type `siglip2`)
feeds variable patch sequences rather than a fixed grid and is refused.

The transform is the checkpoint's own image processor (`preprocessor_config.json`) rebuilt from
PIL steps: resize (shortest edge kept in proportion, or squashed to height x width) and centre
crop with the processor's arithmetic, then scaling and normalisation. The patch grid is the
processor's output size over the patch size, so it is not square when the crop is not; DINOv2
and DINOv3 take any grid (position embeddings interpolated, or rotary), CLIP and SigLIP only the
size their position embeddings were trained for. DINOv3's own processor (torchvision only)
resizes the image as floats; resizing the 8-bit image with Pillow, as here and as the PIL
processors do, agrees with it to within about one gray level. SigLIP has no [CLS] token: record
it with --no-cls-token.

`forward` is the vision model's own forward: a `BaseModelOutputWithPooling` with
`last_hidden_state` and `pooler_output` (see each `Vit` subclass's `head` for how they are made).
"""

import contextlib
import dataclasses
import logging
import pathlib
import types
from collections.abc import Iterator
from typing import Any

import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from saev.activations.families.base import Family, Transform
from saev.activations.vit import TokenLayout, Vit
from saev.data.images import to_rgb
from saev.errors import ModelError

logger = logging.getLogger("saev.activations")

CHECKPOINTS = "a Hugging Face hub id (facebook/dinov2-base, facebook/dinov2-with-registers-small, facebook/dinov3-vits16-pretrain-lvd1689m, google/siglip2-base-patch16-224, openai/clip-vit-base-patch16) or a folder written by save_pretrained"

KINDS = {
    "dinov2": "dinov2",
    "dinov2_with_registers": "dinov2",
    "dinov3_vit": "dinov3",
    "siglip": "siglip",
    "siglip_vision_model": "siglip",
    "clip": "clip",
    "clip_vision_model": "clip",
}
"""Supported `config.model_type` -> how its forward is split."""

VISION_MODELS = {
    "dinov2": "Dinov2Model",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
    "dinov3_vit": "DINOv3ViTModel",
    "siglip_vision_model": "SiglipVisionModel",
    "clip_vision_model": "CLIPVisionModel",
}
"""The `transformers` class of each vision model type (full CLIP/SigLIP use their vision config's)."""


# Loading: checkpoint -> config, image processor and model, with user errors as ModelError.


def _transformers(ckpt: str) -> types.ModuleType:
    try:
        import transformers  # 3 s to import and an optional extra: only the hf family needs it
    except ImportError:
        raise ModelError(
            f"hf checkpoint {ckpt!r}: the hf ViT family needs transformers: pip install -e '.[hf]'"
        ) from None
    return transformers


@contextlib.contextmanager
def _quiet(tf: types.ModuleType) -> Iterator[None]:
    """Silence transformers' loading chatter (progress bars, load reports); missing weights are
    reported by `load_model` instead."""
    tf_logging = tf.utils.logging
    verbosity, bars = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        tf_logging.set_verbosity(verbosity)
        if bars:
            tf_logging.enable_progress_bar()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _not_found(ckpt: str, what: str, err: Exception) -> ModelError:
    import huggingface_hub.constants  # already imported by transformers

    reason = _first_line(err)
    if pathlib.Path(ckpt).is_dir():
        return ModelError(f"hf checkpoint folder {ckpt!r}: cannot read its {what}: {reason}")
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return ModelError(
            f"hf checkpoint {ckpt!r} is not a local folder and is not in the Hugging Face cache, and "
            f"downloads are off (HF_HUB_OFFLINE is set): download it once with network access, or pass "
            f"a folder written by save_pretrained."
        )
    return ModelError(
        f"hf checkpoint {ckpt!r}: no {what} in a local folder or on the Hugging Face Hub: {reason}"
    )


def load_config(ckpt: str) -> tuple[Any, Any]:
    """The checkpoint's config and its vision config (the same object unless a full CLIP/SigLIP)."""
    tf = _transformers(ckpt)
    try:
        with _quiet(tf):
            config = tf.AutoConfig.from_pretrained(ckpt)
    except OSError as err:
        raise _not_found(ckpt, "config (config.json)", err) from None
    except (ValueError, KeyError) as err:
        raise ModelError(
            f"hf checkpoint {ckpt!r}: transformers cannot read its config ({_first_line(err)}); the hf "
            f"family supports model types {', '.join(KINDS)}."
        ) from None
    model_type = getattr(config, "model_type", None)
    if model_type in ("siglip2", "siglip2_vision_model"):
        raise ModelError(
            f"hf checkpoint {ckpt!r} is a NaFlex SigLIP 2 (model type {model_type}), which takes a "
            f"variable number of patches rather than a fixed grid; use a fixed-resolution SigLIP 2 "
            f"checkpoint instead, e.g. google/siglip2-base-patch16-224 (model type siglip)."
        )
    if model_type not in KINDS:
        raise ModelError(
            f"hf checkpoint {ckpt!r} has model type {model_type!r}, which the hf family does not "
            f"support; supported model types: {', '.join(KINDS)}."
        )
    vision = config.vision_config if model_type in ("clip", "siglip") else config
    return config, vision


def load_processor(ckpt: str) -> Any:
    tf = _transformers(ckpt)
    if pathlib.Path(ckpt).is_dir() and not (pathlib.Path(ckpt) / "preprocessor_config.json").is_file():
        raise ModelError(
            f"hf checkpoint folder {ckpt!r} has no image processor config (preprocessor_config.json): "
            f"save the model's image processor there too, with image_processor.save_pretrained(folder)."
        )
    try:
        with _quiet(tf):
            return tf.AutoImageProcessor.from_pretrained(ckpt)
    except OSError as err:
        raise _not_found(ckpt, "image processor config (preprocessor_config.json)", err) from None
    except (ValueError, KeyError) as err:
        raise ModelError(
            f"hf checkpoint {ckpt!r}: transformers cannot read its image processor: {_first_line(err)}"
        ) from None


def load_model(ckpt: str, vision_config: Any, pretrained: bool) -> torch.nn.Module:
    """The vision model in float32 and eval mode: the checkpoint's weights, or random ones."""
    tf = _transformers(ckpt)
    cls = getattr(tf, VISION_MODELS[vision_config.model_type])
    if not pretrained:
        model = cls(vision_config)
    else:
        try:
            with _quiet(tf):
                model, info = cls.from_pretrained(ckpt, dtype=torch.float32, output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as err:
            raise ModelError(f"hf checkpoint {ckpt!r}: cannot load the weights: {_first_line(err)}") from None
        if info.get("missing_keys"):
            logger.warning(
                "hf checkpoint %s lacks weights for %s; they are randomly initialised",
                ckpt,
                ", ".join(sorted(info["missing_keys"])),
            )
    # `head` rebuilds exactly what forward returns: a plain output object, nothing extra.
    model.config.output_hidden_states = False
    model.config.output_attentions = False
    model.config.return_dict = True
    return model.float().eval()


# The transform: the image processor's steps, on PIL images.


def _field(size: Any, key: str) -> int | None:
    """One entry of a processor size (a dict in older transformers, a SizeDict in newer)."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return None if value is None else int(value)


def _resample(value: Any) -> int:
    """The processor's `resample` as a Pillow filter (it may be a Pillow enum, an int or a
    torchvision InterpolationMode); Pillow's bilinear when unset, as the processors default."""
    if value is None:
        return int(Image.Resampling.BILINEAR)
    if isinstance(getattr(value, "value", None), str):
        return int(Image.Resampling[value.value.upper()])
    return int(Image.Resampling(int(value)))


@dataclasses.dataclass(frozen=True)
class ResizeShortestEdge:
    """Shorter side to `size`, the longer one in proportion rounded down, as the processors' PIL
    resize does for `size={"shortest_edge": n}`."""

    size: int
    resample: int

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.size, int(self.size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        return img.resize((new_w, new_h), resample=self.resample)


@dataclasses.dataclass(frozen=True)
class ResizeTo:
    """Squash to (height, width), as the processors do for `size={"height": h, "width": w}`."""

    height: int
    width: int
    resample: int

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.resize((self.width, self.height), resample=self.resample)


@dataclasses.dataclass(frozen=True)
class CenterCrop:
    """The processors' centre crop: top = (h - crop_h) // 2, left = (w - crop_w) // 2 (floor, where
    torchvision rounds), padded with black where the image is smaller than the crop."""

    height: int
    width: int

    def __call__(self, img: Image.Image) -> Image.Image:
        top, left = (img.height - self.height) // 2, (img.width - self.width) // 2
        return img.crop((left, top, left + self.width, top + self.height))


@dataclasses.dataclass(frozen=True)
class Rescale:
    """Multiply by a rescale factor other than 1/255."""

    factor: float

    def __call__(self, x: Tensor) -> Tensor:
        return x * self.factor


def input_size(processor: Any, ckpt: str) -> tuple[int, int]:
    """(height, width) of the images the processor produces; refused when it depends on the image."""
    crop = getattr(processor, "crop_size", None)
    if getattr(processor, "do_center_crop", False) and crop is not None:
        height, width = _field(crop, "height"), _field(crop, "width")
        if height and width:
            return height, width
    size = getattr(processor, "size", None)
    if getattr(processor, "do_resize", False) and size is not None:
        height, width = _field(size, "height"), _field(size, "width")
        if height and width:
            return height, width
    raise ModelError(
        f"hf checkpoint {ckpt!r}: its image processor ({type(processor).__name__}, size={size}, "
        f"crop_size={crop}) gives images whose size depends on the input; the hf family needs a fixed "
        f"size (a centre crop, or a resize to height and width) for a fixed patch grid."
    )


def make_transform(processor: Any, ckpt: str) -> Transform:
    from torchvision.transforms import v2  # 1.7 s to import: commands that never preprocess skip it

    input_size(processor, ckpt)  # refuse variable sizes
    steps: list[Any] = [to_rgb]
    resample = _resample(getattr(processor, "resample", None))
    size = getattr(processor, "size", None)
    if getattr(processor, "do_resize", False):
        height, width = _field(size, "height"), _field(size, "width")
        shortest, longest = _field(size, "shortest_edge"), _field(size, "longest_edge")
        if shortest and not longest:
            steps.append(ResizeShortestEdge(shortest, resample))
        elif height and width:
            steps.append(ResizeTo(height, width, resample))
        else:
            raise ModelError(
                f"hf checkpoint {ckpt!r}: unsupported image processor resize size={size}; the hf family "
                f"resizes to a shortest edge or to height and width."
            )
    if getattr(processor, "do_center_crop", False):
        crop = processor.crop_size
        crop_height, crop_width = _field(crop, "height"), _field(crop, "width")
        if not (crop_height and crop_width):
            raise ModelError(
                f"hf checkpoint {ckpt!r}: unsupported image processor centre crop crop_size={crop}; the hf "
                f"family crops to height and width."
            )
        steps.append(CenterCrop(crop_height, crop_width))
    steps.append(v2.ToImage())
    factor = float(getattr(processor, "rescale_factor", 1 / 255))
    if getattr(processor, "do_rescale", False) and abs(factor - 1 / 255) < 1e-12:
        steps.append(v2.ToDtype(torch.float32, scale=True))
    else:
        steps.append(v2.ToDtype(torch.float32, scale=False))
        if getattr(processor, "do_rescale", False):
            steps.append(Rescale(factor))
    if getattr(processor, "do_normalize", False):
        steps.append(v2.Normalize(mean=list(processor.image_mean), std=list(processor.image_std)))
    return v2.Compose(steps)


def transform(ckpt: str) -> Transform:
    load_config(ckpt)  # refuse unsupported models before trusting their processor
    return make_transform(load_processor(ckpt), ckpt)


# The models behind the Vit interface.


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, list | tuple) else (int(value), int(value))


def _output(last_hidden_state: Tensor, pooler_output: Tensor | None) -> Any:
    from transformers.modeling_outputs import BaseModelOutputWithPooling  # loaded with the model

    return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooler_output)


class HfVit(Vit):
    """A `transformers` vision model; `forward` is its own (a `BaseModelOutputWithPooling`)."""

    model: Any  # each architecture's own model class, whose submodules are reached by name

    def run_block(
        self, i: int, x_BTD: Float[Tensor, "batch tokens d_vit"]
    ) -> Float[Tensor, "batch tokens d_vit"]:
        # The encoders call each layer with the tokens and no attention mask.
        out = self.blocks[i](x_BTD, None)
        return out[0] if isinstance(out, tuple) else out


class Dinov2Vit(HfVit):
    """DINOv2 (with or without registers): [CLS], registers, patches; position embeddings
    interpolated to the input size."""

    def embed(self, x_B3HW: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch tokens d_vit"]:
        return self.model.embeddings(x_B3HW)

    def features(self, x_BTD: Float[Tensor, "batch tokens d_vit"]) -> Float[Tensor, "batch tokens d_vit"]:
        return self.model.layernorm(x_BTD)

    def head(self, x_BTD: Float[Tensor, "batch tokens d_vit"]):
        """last_hidden_state: the final layernorm of every token; pooler_output: its [CLS]."""
        tokens = self.features(x_BTD)
        return _output(tokens, tokens[:, 0, :])


class Dinov3Vit(HfVit):
    """DINOv3: [CLS], registers, patches; rotary position embeddings for the patch grid are passed
    to every layer."""

    def embed(self, x_B3HW: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch tokens d_vit"]:
        return self.model.embeddings(x_B3HW.to(self.model.embeddings.patch_embeddings.weight.dtype))

    def run_block(
        self, i: int, x_BTD: Float[Tensor, "batch tokens d_vit"]
    ) -> Float[Tensor, "batch tokens d_vit"]:
        out = self.blocks[i](x_BTD, position_embeddings=self._rope(x_BTD))
        return out[0] if isinstance(out, tuple) else out

    def _rope(self, x_BTD: Tensor) -> tuple[Tensor, Tensor]:
        """The rotary embeddings the model computes from an image of the layout's grid."""
        layout = self.layout
        if x_BTD.shape[1] != layout.n_prefix + layout.n_patches:
            raise ModelError(
                f"{self.name}: {x_BTD.shape[1]} tokens, but splitting DINOv3 needs the layout's "
                f"{layout.grid[0]}x{layout.grid[1]} grid ({layout.n_prefix + layout.n_patches} tokens): "
                f"use images from the family's transform."
            )
        patch_h, patch_w = _pair(self.model.config.patch_size)
        # Only the shape, dtype and device of the pixels matter; an expanded scalar allocates nothing.
        pixels = x_BTD.new_zeros(()).expand(1, 3, layout.grid[0] * patch_h, layout.grid[1] * patch_w)
        return self.model.rope_embeddings(pixels)

    def features(self, x_BTD: Float[Tensor, "batch tokens d_vit"]) -> Float[Tensor, "batch tokens d_vit"]:
        return self.model.norm(x_BTD)

    def head(self, x_BTD: Float[Tensor, "batch tokens d_vit"]):
        """last_hidden_state: the final norm of every token; pooler_output: its [CLS]."""
        tokens = self.features(x_BTD)
        return _output(tokens, tokens[:, 0, :])


class SiglipVit(HfVit):
    """SigLIP (and fixed-resolution SigLIP 2): patches only, no [CLS]."""

    def embed(self, x_B3HW: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch tokens d_vit"]:
        return self.model.embeddings(x_B3HW)

    def features(self, x_BTD: Float[Tensor, "batch tokens d_vit"]) -> Float[Tensor, "batch tokens d_vit"]:
        return self.model.post_layernorm(x_BTD)

    def head(self, x_BTD: Float[Tensor, "batch tokens d_vit"]):
        """last_hidden_state: post_layernorm of every token; pooler_output: the attention-pooling
        head on those (None, and so absent from the output, when the model has no head)."""
        tokens = self.features(x_BTD)
        return _output(tokens, self.model.head(tokens) if self.model.use_head else None)


class ClipVit(HfVit):
    """CLIP: [CLS] then patches; `pre_layrnorm` before the first block."""

    def embed(self, x_B3HW: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch tokens d_vit"]:
        return self.model.pre_layrnorm(self.model.embeddings(x_B3HW))

    def features(self, x_BTD: Float[Tensor, "batch tokens d_vit"]) -> Float[Tensor, "batch tokens d_vit"]:
        """Every token through post_layernorm (the model itself normalises only [CLS])."""
        return self.model.post_layernorm(x_BTD)

    def head(self, x_BTD: Float[Tensor, "batch tokens d_vit"]):
        """last_hidden_state: the last block's output (not normalised); pooler_output:
        post_layernorm of its [CLS] (no projection: that belongs to the full CLIP model)."""
        return _output(x_BTD, self.model.post_layernorm(x_BTD[:, 0, :]))


def _part(obj: Any, path: str, ckpt: str) -> Any:
    """`obj.a.b`, or a clear error when this transformers version lays the model out differently."""
    for name in path.split("."):
        if not hasattr(obj, name):
            raise ModelError(
                f"hf checkpoint {ckpt!r}: {type(obj).__name__} has no {name!r} in this transformers "
                f"version; the hf family follows the layout of transformers 5."
            )
        obj = getattr(obj, name)
    return obj


def build(ckpt: str, pretrained: bool) -> Vit:
    _, vision = load_config(ckpt)
    model_type = vision.model_type
    kind = KINDS[model_type]
    height, width = input_size(load_processor(ckpt), ckpt)
    patch_h, patch_w = _pair(vision.patch_size)
    if height < patch_h or width < patch_w:
        raise ModelError(
            f"hf checkpoint {ckpt!r}: its image processor gives {height}x{width} images, smaller than a "
            f"{patch_h}x{patch_w} patch."
        )
    if kind in ("siglip", "clip") and (height, width) != _pair(vision.image_size):
        size_h, size_w = _pair(vision.image_size)
        raise ModelError(
            f"hf checkpoint {ckpt!r}: its image processor gives {height}x{width} images, but the "
            f"model's position embeddings are for {size_h}x{size_w}."
        )
    grid = (height // patch_h, width // patch_w)
    model = load_model(ckpt, vision, pretrained)
    n_registers = int(getattr(vision, "num_register_tokens", 0) or 0)
    layout = TokenLayout(grid, has_cls=kind != "siglip", n_registers=n_registers)
    cls, blocks, parts = {
        "dinov2": (Dinov2Vit, "encoder.layer", ("embeddings", "layernorm")),
        "dinov3": (Dinov3Vit, "model.layer", ("embeddings.patch_embeddings", "rope_embeddings", "norm")),
        "siglip": (SiglipVit, "encoder.layers", ("embeddings", "post_layernorm", "use_head")),
        "clip": (ClipVit, "encoder.layers", ("embeddings", "pre_layrnorm", "post_layernorm")),
    }[kind]
    for part in parts:
        _part(model, part, ckpt)
    return cls("hf", ckpt, model, _part(model, blocks, ckpt), layout, int(vision.hidden_size))


FAMILY = Family(
    "hf",
    "DINOv2, DINOv3, SigLIP, SigLIP 2 and CLIP through Hugging Face transformers, with their own image processors",
    CHECKPOINTS,
    build,
    transform,
)

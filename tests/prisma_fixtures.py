"""ViT-Prisma SAE checkpoints as ViT-Prisma writes them, and its forward in plain torch (no vit_prisma import).

No vit_prisma import.  Mirrors (as of ViT-Prisma commit aa5ff6ad, 2025-05-23, and the
Nov-2024 code the published CLIP SAEs were trained with):

  * SparseAutoencoder.save_model   -> torch.save({"cfg": cfg, "state_dict": sd}, path)
  * VisionSAETrainer.checkpoint    -> cfg.save_config(<dir>/config.json) + n_images_<N>.pt
  * HF uploads                     -> config.json + weights.pt | n_images_2600058.pt, where
                                      the .pt is EITHER the dict above OR a bare state_dict.

Writers put a *real* dataclass whose pickled global name is
``vit_prisma.sae.config.VisionModelSAERunnerConfig`` into the pickle, by registering
throw-away modules in sys.modules only while torch.save runs.  The resulting pickle
has exactly the same globals as the files on the Hub (checked with pickletools).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pickle
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any

import torch

PRISMA_CFG_MODULE = "vit_prisma.sae.config"
PRISMA_CFG_CLASS = "VisionModelSAERunnerConfig"
PRISMA_CFG_GLOBAL = f"{PRISMA_CFG_MODULE}.{PRISMA_CFG_CLASS}"


# --------------------------------------------------------------------------------------
# Config dataclasses (field names/order copied from ViT-Prisma)
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Cfg2024:
    """Field order of RunnerConfig+VisionModelSAERunnerConfig at 96c6146 / 6f359fc
    (Nov 2024).  torch.device / torch.dtype are real fields here."""

    model_class_name: str = "HookedViT"
    model_name: str = "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"
    vit_model_cfg: Any = None
    model_path: str | None = None
    hook_point_layer: int = 9
    layer_subtype: str = "hook_resid_post"
    hook_point_head_index: int | None = None
    context_size: int = 50
    use_cached_activations: bool = False
    use_patches_only: bool = False
    cached_activations_path: str | None = None
    d_in: int = 768
    activation_fn_str: str = "relu"
    activation_fn_kwargs: dict = dataclasses.field(default_factory=dict)
    cls_token_only: bool = False
    max_grad_norm: float = 1.0
    initialization_method: str = "encoder_transpose_decoder"
    normalize_activations: str | None = None
    n_batches_in_buffer: int = 20
    store_batch_size: int = 32
    num_workers: int = 16
    num_epochs: int = 10
    total_training_images: int = 13_000_000
    total_training_tokens: int = 650_000_000
    image_size: int = 224
    device: Any = dataclasses.field(default_factory=lambda: torch.device("cuda"))
    seed: int = 42
    dtype: Any = torch.float32
    architecture: str = "standard"
    verbose: bool = False
    b_dec_init_method: str = "geometric_median"
    expansion_factor: int = 64
    from_pretrained_path: str | None = None
    d_sae: int | None = None
    l1_coefficient: float = 1e-05
    lp_norm: float = 1
    lr: float = 0.0004
    lr_scheduler_name: str = "cosineannealingwarmup"
    lr_warm_up_steps: int = 200
    train_batch_size: int = 4096
    dataset_name: str = "imagenet1k"
    dataset_path: str = "/network/scratch/s/sonia.joseph/datasets/kaggle_datasets"
    dataset_train_path: str = (
        "/network/scratch/s/sonia.joseph/datasets/kaggle_datasets/ILSVRC/Data/CLS-LOC/train"
    )
    dataset_val_path: str = "/network/scratch/s/sonia.joseph/datasets/kaggle_datasets/ILSVRC/Data/CLS-LOC/val"
    use_ghost_grads: bool = False
    feature_sampling_window: int = 1000
    dead_feature_window: int = 5000
    dead_feature_threshold: float = 1e-08
    log_to_wandb: bool = True
    wandb_project: str = "clip"
    wandb_entity: str | None = None
    wandb_log_frequency: int = 100
    n_validation_runs: int = 10
    n_checkpoints: int = 10
    checkpoint_path: str = "/network/scratch/s/sonia.joseph/checkpoints/clip-b"

    def __post_init__(self):  # what the 2024 __post_init__ stores in __dict__
        self.hook_point = f"blocks.{self.hook_point_layer}.{self.layer_subtype}"
        if self.cached_activations_path is None:
            self.cached_activations_path = (
                f"activations/{self.dataset_path.replace('/', '_')}/"
                f"{self.model_name.replace('/', '_')}/{self.hook_point}"
            )
        self.d_sae = self.d_in * self.expansion_factor
        self.tokens_per_buffer = self.train_batch_size * self.context_size * self.n_batches_in_buffer
        self.total_training_steps = self.total_training_tokens // self.train_batch_size
        self.activation_fn_kwargs = self.activation_fn_kwargs or {}


@dataclasses.dataclass
class _Cfg2025:
    """Field order of VisionModelSAERunnerConfig at HEAD (src/vit_prisma/sae/config.py:287-404).
    d_sae / hook_point / device / dtype are *properties* (not in __dict__)."""

    model_class_name: str = "HookedViT"
    model_name: str = "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"
    vit_model_cfg: Any = None
    model_path: str | None = None
    hook_point_layer: int = 9
    layer_subtype: str = "ln2.hook_normalized"
    hook_point_head_index: int | None = None
    context_size: int = 50
    use_cached_activations: bool = False
    use_patches_only: bool = False
    cached_activations_path: str | None = None
    image_size: int = 224
    architecture: str = "standard"
    b_dec_init_method: str = "geometric_median"
    expansion_factor: int = 16
    from_pretrained_path: str | None = None
    is_transcoder: bool = False
    transcoder_with_skip_connection: bool = True
    out_hook_point_layer: int = 9
    layer_out_subtype: str = "hook_mlp_out"
    d_out: int = 768
    _device: str = "cuda"
    seed: int = 42
    _dtype: str = "float32"
    d_in: int = 768
    activation_fn_str: str = "topk"
    activation_fn_kwargs: dict = dataclasses.field(default_factory=dict)
    cls_token_only: bool = False
    max_grad_norm: float = 1.0
    initialization_method: str = "independent"
    normalize_activations: str | None = "layer_norm"
    n_batches_in_buffer: int = 20
    store_batch_size: int = 32
    num_workers: int = 16
    num_epochs: int = 1
    verbose: bool = False
    l1_coefficient: float = 0.0002
    lp_norm: float = 1
    lr: float = 0.001
    lr_scheduler_name: str = "cosineannealingwarmup"
    lr_warm_up_steps: int = 500
    train_batch_size: int = 4096
    dataset_name: str = "imgnet"
    dataset_path: str = "/network/scratch/s/sonia.joseph/datasets/kaggle_datasets"
    dataset_train_path: str = (
        "/network/scratch/s/sonia.joseph/datasets/kaggle_datasets/ILSVRC/Data/CLS-LOC/train"
    )
    dataset_val_path: str = "/network/scratch/s/sonia.joseph/datasets/kaggle_datasets/ILSVRC/Data/CLS-LOC/val"
    use_ghost_grads: bool = False
    feature_sampling_window: int = 1000
    dead_feature_window: int = 5000
    dead_feature_threshold: float = 1e-08
    log_to_wandb: bool = True
    wandb_project: str = "tinyclip_sae_16_hyperparam_sweep_lr"
    wandb_entity: str | None = None
    wandb_log_frequency: int = 10
    n_validation_runs: int = 0
    n_checkpoints: int = 10
    checkpoint_path: str = "/network/scratch/p/praneet.suresh/open_clip_celeba_checkpoints/"

    @property
    def d_sae(self):
        return self.d_in * self.expansion_factor

    @property
    def hook_point(self):
        return f"blocks.{self.hook_point_layer}.{self.layer_subtype}"

    def __post_init__(self):
        if self.cached_activations_path is None:
            self.cached_activations_path = (
                f"activations/{self.dataset_path.replace('/', '_')}/"
                f"{self.model_name.replace('/', '_')}/{self.hook_point}"
            )


@contextmanager
def _pretend_prisma(cls):
    """Make `cls` picklable as vit_prisma.sae.config.VisionModelSAERunnerConfig."""
    saved = {k: sys.modules.get(k) for k in ("vit_prisma", "vit_prisma.sae", PRISMA_CFG_MODULE)}
    old = (cls.__module__, cls.__qualname__, cls.__name__)
    try:
        for name in ("vit_prisma", "vit_prisma.sae", PRISMA_CFG_MODULE):
            if sys.modules.get(name) is None:
                sys.modules[name] = types.ModuleType(name)
        setattr(sys.modules[PRISMA_CFG_MODULE], PRISMA_CFG_CLASS, cls)
        cls.__module__, cls.__qualname__, cls.__name__ = PRISMA_CFG_MODULE, PRISMA_CFG_CLASS, PRISMA_CFG_CLASS
        yield
    finally:
        cls.__module__, cls.__qualname__, cls.__name__ = old
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


# --------------------------------------------------------------------------------------
# State dicts (same key order as nn.Module registration order in ViT-Prisma)
# --------------------------------------------------------------------------------------
def make_state_dict(d_in=8, d_sae=32, architecture="standard", seed=0, d_out=None):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g)

    if architecture == "standard":  # sae.py:537-555  W_dec, W_enc, b_enc, b_dec
        W_dec = r(d_sae, d_in)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)  # trainer normalises rows before saving
        return OrderedDict(W_dec=W_dec, W_enc=r(d_in, d_sae), b_enc=0.1 * r(d_sae), b_dec=0.1 * r(d_in))
    if architecture == "gated":  # sae.py:659-694  (b_enc is saved but unused)
        return OrderedDict(
            W_enc=r(d_in, d_sae),
            b_gate=0.1 * r(d_sae),
            r_mag=0.1 * r(d_sae),
            b_mag=0.1 * r(d_sae),
            W_dec=r(d_sae, d_in),
            b_enc=torch.zeros(d_sae),
            b_dec=0.1 * r(d_in),
        )
    if architecture == "transcoder":  # transcoder.py:8-26
        d_out = d_out or d_in
        return OrderedDict(
            W_skip=r(d_in, d_in),
            W_dec=r(d_sae, d_out),
            W_enc=r(d_in, d_sae),
            b_enc=0.1 * r(d_sae),
            b_dec=0.1 * r(d_in),
            b_dec_out=0.1 * r(d_out),
        )
    raise ValueError(architecture)


# --------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------
def _json_2024(cfg: _Cfg2024) -> dict:
    """RunnerConfig.save_config at 96c6146: asdict + torch.device/dtype tagging."""

    def ser(o):
        if isinstance(o, torch.device):
            return {"__type__": "torch.device", "value": str(o)}
        if isinstance(o, torch.dtype):
            return {"__type__": "torch.dtype", "value": repr(o)}
        if isinstance(o, (list, tuple)):
            return [ser(i) for i in o]
        if isinstance(o, dict):
            return {k: ser(v) for k, v in o.items()}
        return o

    return ser(dataclasses.asdict(cfg))


def _json_2025(cfg: _Cfg2025) -> dict:
    """config.py:574-606 at HEAD: asdict (properties are not included) + _dtype/_device."""
    d = dataclasses.asdict(cfg)
    d["_dtype"], d["_device"] = cfg._dtype, cfg._device
    return d


def write_legacy_pt(
    path,
    era="2024",
    d_in=8,
    expansion_factor=4,
    architecture="standard",
    activation_fn_str="relu",
    activation_fn_kwargs=None,
    normalize_activations=None,
    with_config_json=True,
    seed=0,
    **cfg_kw,
):
    """torch.save({"cfg": <VisionModelSAERunnerConfig>, "state_dict": OrderedDict}, path)
    (sae.py:299-318).  era="2024": matches imagenet-sweep-*/celeba-* weights.pt on the Hub
    (pickle globals: VisionModelSAERunnerConfig, torch.device, torch.float32, OrderedDict,
    FloatStorage, _rebuild_tensor_v2).  era="2025": matches CLIP-transcoder-* weights.pt
    (no torch.device / torch.float32)."""
    kw = dict(
        d_in=d_in,
        expansion_factor=expansion_factor,
        architecture=architecture,
        activation_fn_str=activation_fn_str,
        activation_fn_kwargs=dict(activation_fn_kwargs or {}),
        normalize_activations=normalize_activations,
        **cfg_kw,
    )
    if architecture == "transcoder":
        kw["architecture"] = "standard"
        kw["is_transcoder"] = True
        kw.setdefault("d_out", d_in)
    cls = _Cfg2024 if era == "2024" else _Cfg2025
    cfg = cls(**kw)
    # attributes VisionSAETrainer.__init__ adds (train_sae.py:96-120)
    cfg.unique_hash = "1a2b3c4d"
    cfg.run_name = f"{cfg.unique_hash}-{cfg.wandb_project}"
    cfg.checkpoint_path = f"{cfg.checkpoint_path}/{cfg.run_name}"
    sd = make_state_dict(d_in, d_in * expansion_factor, architecture, seed, d_out=kw.get("d_out"))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _pretend_prisma(cls):
        if str(path).endswith(".pt"):
            torch.save({"cfg": cfg, "state_dict": sd}, path)
        else:  # "pkl.gz"
            with gzip.open(path, "wb") as f:
                pickle.dump({"cfg": cfg, "state_dict": sd}, f)
    if with_config_json:
        cj = _json_2024(cfg) if era == "2024" else _json_2025(cfg)
        with open(os.path.join(os.path.dirname(os.path.abspath(path)), "config.json"), "w") as f:
            json.dump(cj, f, indent=4)
    return cfg, sd


def write_bare_pt(
    dirpath,
    filename="n_images_2600058.pt",
    era="2024",
    d_in=8,
    expansion_factor=4,
    architecture="standard",
    activation_fn_str="relu",
    activation_fn_kwargs=None,
    normalize_activations=None,
    seed=0,
    **cfg_kw,
):
    """Hub layout of sparse-autoencoder-clip-b-32-* (n_images_2600058.pt) and
    sae-top_k-64-cls_only-* (weights.pt): config.json + torch.save(OrderedDict state_dict)
    (pickle globals: OrderedDict, FloatStorage, _rebuild_tensor_v2 only)."""
    kw = dict(
        d_in=d_in,
        expansion_factor=expansion_factor,
        architecture=architecture,
        activation_fn_str=activation_fn_str,
        activation_fn_kwargs=dict(activation_fn_kwargs or {}),
        normalize_activations=normalize_activations,
        **cfg_kw,
    )
    cfg = (_Cfg2024 if era == "2024" else _Cfg2025)(**kw)
    sd = make_state_dict(d_in, d_in * expansion_factor, architecture, seed)
    os.makedirs(dirpath, exist_ok=True)
    torch.save(sd, os.path.join(dirpath, filename))
    cj = _json_2024(cfg) if era == "2024" else _json_2025(cfg)
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(cj, f, indent=4)
    return cj, sd


def _act(pre, name, kwargs):
    if name == "relu":
        return torch.relu(pre)
    if name == "topk":
        top = torch.topk(pre, k=int(kwargs["k"]), dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
    raise ValueError(name)


def ref_encode(x, sd, architecture="standard", activation_fn_str="relu", activation_fn_kwargs=None):
    """ViT-Prisma's encode without input normalisation (sae.py:557-595, 696-727): b_dec is always subtracted."""
    sae_in = x - sd["b_dec"]
    kwargs = activation_fn_kwargs or {}
    if architecture == "gated":
        gate = ((sae_in @ sd["W_enc"] + sd["b_gate"]) > 0).to(x.dtype)
        return gate * _act(
            sae_in @ (sd["W_enc"] * sd["r_mag"].exp()) + sd["b_mag"], activation_fn_str, kwargs
        )
    return _act(sae_in @ sd["W_enc"] + sd["b_enc"], activation_fn_str, kwargs)


def ref_decode(f, sd):
    return f @ sd["W_dec"] + sd["b_dec"]

"""ViT-Prisma SAEs: `config.json` next to a torch.save'd `.pt` (`weights.pt`, `n_images_<N>.pt`).

The `.pt` is either a bare state dict or `{"cfg": VisionModelSAERunnerConfig, "state_dict": ...}`
(`SparseAutoencoder.save_model`). The config object is read into a stand-in class that holds its
fields and runs no code (`torch.load(weights_only=True)` with that one name allowed); `config.json`
is preferred when present, in its 2024 or 2025 form. ViT-Prisma always encodes `x - b_dec`.

Supported: `standard` and `gated` architectures, `relu` and `topk` activations (ReLU of the kept
values, as saev's TopK), no input normalisation. Refused by name: transcoders, `tanh-relu`, and the
per-token `layer_norm` / `constant_norm_rescale` normalisations, whose reconstruction needs each
token's own statistics, which codes do not carry. Facts about the ViT (open-clip model, block, CLS or
patch tokens) become provenance when the SAE reads a block's output (`hook_resid_post`).
"""

import logging
import pathlib
import re

import torch

from saev.errors import CheckpointError
from saev.nn import config
from saev.nn.architectures.gated import Gated
from saev.nn.architectures.relu import Relu
from saev.nn.architectures.topk import TopK
from saev.nn.formats import checks
from saev.nn.modeling import SparseAutoencoder

logger = logging.getLogger(__name__)

CONFIG = "config.json"
FILES = ("weights.pt", "n_images_2600058.pt")
"""Weight file names of the published ViT-Prisma SAEs (fetched from the Hub by name)."""
_CHECKPOINT = re.compile(r"n_images_(\d+)\.pt")
_CONFIG_CLASS = "vit_prisma.sae.config.VisionModelSAERunnerConfig"


class PrismaConfig:
    """Stand-in for ViT-Prisma's pickled config class: it receives the fields and nothing else."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def weights_in(folder: pathlib.Path) -> pathlib.Path | None:
    """The folder's weight file: weights.pt, else the latest trainer checkpoint n_images_<N>.pt."""
    if (folder / "weights.pt").is_file():
        return folder / "weights.pt"
    found = sorted((int(m[1]), p) for p in folder.iterdir() if (m := _CHECKPOINT.fullmatch(p.name)))
    if len(found) > 1:
        logger.warning(
            "%s: %d ViT-Prisma checkpoints; reading the latest, %s.", folder, len(found), found[-1][1].name
        )
    return found[-1][1] if found else None


def read(path: pathlib.Path, allow_nonfinite: bool) -> SparseAutoencoder:
    weights_path = weights_in(path) if path.is_dir() else path
    if weights_path is None:
        raise CheckpointError(
            f"{path}: a ViT-Prisma folder needs weights.pt or n_images_<N>.pt next to {CONFIG}."
        )
    blob = checks.read_regular_file(weights_path)
    obj = checks.torch_load(weights_path, blob, [(PrismaConfig, _CONFIG_CLASS)])
    pickled_cfg, state = _split(weights_path, obj)
    cfg_path = weights_path.parent / CONFIG
    if cfg_path.is_file():
        cfg = checks.read_json_object(cfg_path)
    elif pickled_cfg is not None:
        cfg, cfg_path = pickled_cfg, weights_path
    else:
        raise CheckpointError(
            f"{weights_path}: holds only weights, and there is no {cfg_path} describing them."
        )
    sae_cfg, gated = _config(cfg_path, cfg)
    weights, act_state = _weights(weights_path, state, gated)
    prov = config.Provenance(
        source="prisma", origin={"format": "prisma", "config": _jsonable(cfg)}, **_provenance(cfg_path, cfg)
    )
    return checks.build(weights_path, sae_cfg, prov, weights, act_state, allow_nonfinite)


def _split(path: pathlib.Path, obj: object) -> tuple[dict | None, dict]:
    if isinstance(obj, dict) and "state_dict" in obj and "cfg" in obj:
        cfg = obj["cfg"]
        return (vars(cfg) if isinstance(cfg, PrismaConfig) else cfg if isinstance(cfg, dict) else None), obj[
            "state_dict"
        ]
    if isinstance(obj, dict):
        return None, obj
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a ViT-Prisma state dict.")


def _config(path: pathlib.Path, cfg: dict) -> tuple[config.SaeConfig, bool]:
    if cfg.get("is_transcoder"):
        raise CheckpointError(
            f"{path}: a ViT-Prisma transcoder (is_transcoder), not an autoencoder; saev reads SAEs only."
        )
    norm = cfg.get("normalize_activations")
    if norm not in (None, "none"):
        raise CheckpointError(
            f"{path}: normalize_activations={norm!r} normalises each token by its own statistics, which a "
            "reconstruction from codes cannot undo; saev reads ViT-Prisma SAEs trained without it (null)."
        )
    arch = checks.config_value(path, cfg, "architecture", str, "standard")
    if arch not in ("standard", "gated"):
        raise CheckpointError(
            f"{path}: ViT-Prisma architecture {arch!r} is not supported; saev reads standard and gated."
        )
    d_in = checks.config_value(path, cfg, "d_in", int)
    d_sae = cfg.get("d_sae") or d_in * checks.config_value(path, cfg, "expansion_factor", int)
    fn = checks.config_value(path, cfg, "activation_fn_str", str, "relu")
    activation: Gated | Relu | TopK
    if fn == "relu":
        activation = Gated() if arch == "gated" else Relu()
    elif fn == "topk" and arch == "standard":
        kwargs = cfg.get("activation_fn_kwargs") or {}
        activation = TopK(k=checks.config_value(path, kwargs, "k", int))
    else:
        raise CheckpointError(
            f"{path}: activation {fn!r} with architecture {arch!r} is not supported (relu, topk)."
        )
    return checks.make_config(
        path,
        d_vit=d_in,
        d_sae=checks.config_value(path, {"d_sae": d_sae}, "d_sae", int),
        activation=activation,
        subtract_b_dec=True,
    ), arch == "gated"


def _weights(path: pathlib.Path, state: dict, gated: bool) -> tuple[dict, dict]:
    expected = {"W_enc", "W_dec", "b_dec", "b_enc"} | ({"b_gate", "r_mag", "b_mag"} if gated else set())
    if set(state) != expected:
        raise CheckpointError(
            f"{path}: a ViT-Prisma {'gated' if gated else 'standard'} SAE has tensors {sorted(expected)}, "
            f"the file has {sorted(state, key=str)}."
        )
    tensors = {k: checks.float_tensor(path, k, v).to(torch.float32) for k, v in state.items()}
    # The gated SAE saves a b_enc it never uses; its gate bias is b_gate.
    weights = {k: tensors[k] for k in ("W_enc", "W_dec", "b_dec")} | {
        "b_enc": tensors["b_gate" if gated else "b_enc"]
    }
    return weights, ({"r_mag": tensors["r_mag"], "b_mag": tensors["b_mag"]} if gated else {})


def _provenance(path: pathlib.Path, cfg: dict) -> dict:
    facts: dict = {}
    model = cfg.get("model_name")
    if isinstance(model, str) and model.startswith("open-clip:"):
        facts |= {"vit_family": "clip", "vit_ckpt": "hf-hub:" + model.removeprefix("open-clip:")}
    hook = f"blocks.{cfg.get('hook_point_layer')}.{cfg.get('layer_subtype')}"
    if cfg.get("layer_subtype") == "hook_resid_post" and isinstance(cfg.get("hook_point_layer"), int):
        facts["layer"] = cfg["hook_point_layer"]
    else:
        logger.warning(
            "%s: this SAE reads %s, not a block's output; saev records block outputs, so its layer is left unset.",
            path,
            hook,
        )
    facts["tokens"] = (
        "cls" if cfg.get("cls_token_only") else "patches" if cfg.get("use_patches_only") else "all"
    )
    if isinstance(cfg.get("context_size"), int) and cfg["context_size"] > 1:
        facts["n_patches_per_img"] = cfg["context_size"] - 1
    if isinstance(cfg.get("dataset_name"), str):
        facts["dataset"] = cfg["dataset_name"]
    return facts


def _jsonable(value: object) -> object:
    """The config with torch.device and dtype values (from a pickled config) as strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)

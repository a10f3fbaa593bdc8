"""sparsify folders (EleutherAI): `cfg.json` + `sae.safetensors`, one folder per hookpoint on the Hub.

sparsify encodes `topk(relu((x - b_dec) @ encoder.weight.T + encoder.bias))`, the same codes as saev's
TopK with `subtract_b_dec`. Its encoder weight is [d_sae, d_in], the transpose of saev's `W_enc`;
its `W_dec` is [d_sae, d_in] like saev's. Transcoders (`transcode`), skip connections (`W_skip`: the
reconstruction would depend on the input, not only on the codes) and `groupmax` are refused. sparsify
has no normalisation, so writing folds saev's into the weights.
"""

import json
import pathlib

import torch
from safetensors.torch import save as st_save

from saev.errors import CheckpointError
from saev.fileio import atomic_open, canonical_safetensors
from saev.nn import config
from saev.nn.architectures.topk import TopK
from saev.nn.formats import checks, folding
from saev.nn.modeling import SparseAutoencoder

CFG, WEIGHTS = "cfg.json", "sae.safetensors"
TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")


def read(folder: pathlib.Path, allow_nonfinite: bool) -> SparseAutoencoder:
    cfg_path, weights_path = folder / CFG, folder / WEIGHTS
    cfg = checks.read_json_object(cfg_path)
    d_in = checks.config_value(cfg_path, cfg, "d_in", int)
    for flag, why in (
        ("transcode", "a transcoder predicts another module's output"),
        ("skip_connection", ""),
    ):
        if checks.config_value(cfg_path, cfg, flag, bool, False):
            raise CheckpointError(f"{cfg_path}: {flag}=true is not supported: {why or _SKIP}.")
    activation = checks.config_value(cfg_path, cfg, "activation", str, "topk")
    if activation != "topk":
        raise CheckpointError(f"{cfg_path}: activation {activation!r} is not supported; saev reads 'topk'.")
    n_latents = checks.config_value(cfg_path, cfg, "num_latents", int, 0)
    d_sae = n_latents or d_in * checks.config_value(cfg_path, cfg, "expansion_factor", int, 32)
    tensors = checks.read_safetensors(weights_path)
    if "W_skip" in tensors:
        raise CheckpointError(f"{weights_path}: holds W_skip, which is not supported: {_SKIP}.")
    if set(tensors) != set(TENSORS):
        raise CheckpointError(
            f"{weights_path}: a sparsify SAE has tensors {list(TENSORS)}, the file has {sorted(tensors)}."
        )
    enc = checks.float_tensor(weights_path, "encoder.weight", tensors["encoder.weight"])
    if enc.ndim != 2 or tuple(enc.shape) != (d_sae, d_in):
        raise CheckpointError(
            f"{weights_path}: cfg.json implies encoder.weight of shape [num_latents, d_in] = [{d_sae}, {d_in}] "
            f"(sparsify stores the encoder as an nn.Linear), but it has {list(enc.shape)}."
        )
    weights = {
        "W_enc": enc.T.contiguous(),
        "b_enc": tensors["encoder.bias"],
        "W_dec": tensors["W_dec"],
        "b_dec": tensors["b_dec"],
    }
    weights = {k: checks.float_tensor(weights_path, k, v).to(torch.float32) for k, v in weights.items()}
    sae_cfg = checks.make_config(
        cfg_path,
        d_vit=d_in,
        d_sae=d_sae,
        activation=TopK(k=checks.config_value(cfg_path, cfg, "k", int)),
        subtract_b_dec=True,
        normalize_w_dec=checks.config_value(cfg_path, cfg, "normalize_decoder", bool, True),
    )
    prov = config.Provenance(source="sparsify", origin={"format": "sparsify", "config": cfg})
    return checks.build(weights_path, sae_cfg, prov, weights, {}, allow_nonfinite)


_SKIP = "the reconstruction of a skip connection depends on the input, not only on the codes"


def write(folder: pathlib.Path, sae: SparseAutoencoder) -> None:
    """`sae` (a TopK with ReLU) as a sparsify folder that `SparseCoder.load_from_disk` reads."""
    act = sae.cfg.activation
    if not isinstance(act, TopK) or not act.relu:
        raise CheckpointError(
            f"{folder}: sparsify's SAEs are TopK with ReLU; this one is {act}. Save it as native or saelens."
        )
    w = folding.fold_normalization(sae)
    if not sae.cfg.subtract_b_dec:
        # sparsify always encodes x - b_dec: x W + b = (x - b_dec) W + (b + b_dec W).
        w["b_enc"] = w["b_enc"] + w["b_dec"] @ w["W_enc"]
    origin = sae.provenance.origin or {}
    base = dict(origin["config"]) if origin.get("format") == "sparsify" else {}
    d_in, d_sae = sae.cfg.d_vit, sae.cfg.d_sae
    cfg = base | {
        "activation": "topk",
        "expansion_factor": max(d_sae // d_in, 1),
        "normalize_decoder": sae.cfg.normalize_w_dec,
        "num_latents": d_sae,
        "k": act.k,
        "multi_topk": base.get("multi_topk", False),
        "skip_connection": False,
        "transcode": False,
        "d_in": d_in,
    }
    tensors = {
        "encoder.weight": w["W_enc"].T,
        "encoder.bias": w["b_enc"],
        "W_dec": w["W_dec"],
        "b_dec": w["b_dec"],
    }
    folder.mkdir(parents=True, exist_ok=True)
    payload = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    with atomic_open(folder / WEIGHTS) as f:
        f.write(canonical_safetensors(payload))
    with atomic_open(folder / CFG) as f:
        f.write(json.dumps(cfg).encode())

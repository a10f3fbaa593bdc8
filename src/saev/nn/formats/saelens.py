"""SAELens folders: `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`, `activation_scaler.json`).

SAELens encodes `sae_in @ W_enc + b_enc` with `sae_in = x - b_dec` when `apply_b_dec_to_input`,
and keeps weights under saev's own names (W_enc [d_in, d_sae], W_dec [d_sae, d_in]). Mapping:

- `standard` <-> Relu; `topk` <-> TopK (ReLU of the kept values, as saev's); `jumprelu` <-> JumpRelu
  (saev keeps log-thresholds, so a threshold passing through exp/log may move by one float32 ulp,
  which changes a code only for a pre-activation within that ulp of its threshold);
  `gated` <-> Gated (`b_gate` is saev's `b_enc`). saev's BatchTopK is written as `jumprelu` with its
  threshold on every latent, as SAELens saves its own BatchTopK for inference.
- `rescale_acts_by_decoder_norm` (TopK) is folded into the weights on reading: codes are unchanged.
- `normalize_activations`: `none`; `expected_average_only_in` with the scaling factor of
  `activation_scaler.json` (SAELens' trainer state; finished SAELens runs fold it themselves) is
  folded into the weights on reading, as SAELens' `from_pretrained` does. Writing always folds
  saev's normalisation `(x - mean) / scale` into the weights (SAELens has no mean), so SAELens
  reads raw activations; the statistics are recorded under `metadata.saev`.

`metadata` (hook_name, model_name, ...) and the whole source config are kept as provenance, so a
SAELens folder converted to saev and back gets its own cfg.json back.
"""

import json
import math
import pathlib
import typing

import torch
from safetensors.torch import save as st_save
from torch import Tensor

import saev
from saev.errors import CheckpointError
from saev.fileio import atomic_open, canonical_safetensors
from saev.nn import config
from saev.nn.architectures.batchtopk import BatchTopK, BatchTopKActivation
from saev.nn.architectures.gated import Gated
from saev.nn.architectures.jumprelu import JumpRelu, JumpReluActivation
from saev.nn.architectures.relu import Relu
from saev.nn.architectures.topk import TopK
from saev.nn.formats import checks, folding
from saev.nn.modeling import SparseAutoencoder

CFG, WEIGHTS, SCALER = "cfg.json", "sae_weights.safetensors", "activation_scaler.json"
FILES = (WEIGHTS, "sparsity.safetensors", SCALER)
ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")
NORMALIZATIONS = ("none", "expected_average_only_in")
SAELENS_VERSION = "6.0.0"
"""The SAELens config layout folders written by saev follow."""
SMALLEST_THRESHOLD = 1e-30
"""JumpReLU thresholds at or below 0 act as 0 (codes are ReLU'd first); saev stores log-thresholds,
so they become this instead (a pre-activation in (0, 1e-30] is the only difference)."""


def read(folder: pathlib.Path, allow_nonfinite: bool) -> SparseAutoencoder:
    cfg_path = folder / CFG
    raw = checks.read_json_object(cfg_path)
    cfg = _modernised(raw)
    arch = checks.config_value(cfg_path, cfg, "architecture", str, "standard")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{cfg_path}: SAELens architecture {arch!r} is not supported; saev reads {', '.join(ARCHITECTURES)}."
        )
    d_in = checks.config_value(cfg_path, cfg, "d_in", int)
    d_sae = checks.config_value(cfg_path, cfg, "d_sae", int)
    tensors = checks.read_safetensors(folder / WEIGHTS)
    activation, weights, act_state = _from_saelens(folder / WEIGHTS, arch, cfg_path, cfg, tensors)
    sae_cfg = checks.make_config(
        cfg_path,
        d_vit=d_in,
        d_sae=d_sae,
        activation=activation,
        subtract_b_dec=checks.config_value(cfg_path, cfg, "apply_b_dec_to_input", bool, True),
    )
    for name, tensor in weights.items():
        checks.float_tensor(folder / WEIGHTS, name, tensor)
    weights = {k: v.to(torch.float32) for k, v in weights.items()}
    if arch == "topk" and checks.config_value(cfg_path, cfg, "rescale_acts_by_decoder_norm", bool, False):
        weights = folding.fold_decoder_norm(weights)
    scale = _scaling_factor(folder, cfg_path, cfg)
    if scale is not None:
        weights = folding.fold_input_scale(weights, scale)
    prov = config.Provenance(
        source="saelens", origin={"format": "saelens", "config": raw}, **_provenance(cfg)
    )
    return checks.build(folder / WEIGHTS, sae_cfg, prov, weights, act_state, allow_nonfinite)


def _modernised(cfg: dict) -> dict:
    """Pre-6.0 SAELens configs (flat hook_point, activation_fn_str, boolean normalisation) in 6.x terms."""
    cfg = dict(cfg)
    if "metadata" not in cfg:
        cfg["metadata"] = {
            k: cfg[k] for k in ("model_name", "hook_name", "hook_point", "dataset_path") if k in cfg
        }
    fn = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    kwargs = cfg.get("activation_fn_kwargs")
    if "architecture" not in cfg and fn == "topk" and isinstance(kwargs, dict) and "k" in kwargs:
        cfg |= {"architecture": "topk", "k": kwargs["k"]}
    if isinstance(cfg.get("normalize_activations"), bool):
        cfg["normalize_activations"] = "expected_average_only_in" if cfg["normalize_activations"] else "none"
    return cfg


def _from_saelens(
    weights_path: pathlib.Path, arch: str, cfg_path: pathlib.Path, cfg: dict, tensors: dict[str, Tensor]
) -> tuple[object, dict[str, Tensor], dict[str, Tensor]]:
    """The saev activation config, the four weights under saev's names and the activation's own tensors."""
    own = {"standard": (), "topk": (), "jumprelu": ("threshold",), "gated": ("b_gate", "r_mag", "b_mag")}[
        arch
    ]
    bias = "b_gate" if arch == "gated" else "b_enc"
    expected = {"W_enc", bias, "W_dec", "b_dec", *own}
    if set(tensors) != expected:
        raise CheckpointError(
            f"{weights_path}: a SAELens {arch!r} SAE has tensors {sorted(expected)}, the file has {sorted(tensors)}."
        )
    weights = {
        "W_enc": tensors["W_enc"],
        "b_enc": tensors[bias],
        "W_dec": tensors["W_dec"],
        "b_dec": tensors["b_dec"],
    }
    if arch == "standard":
        return Relu(), weights, {}
    if arch == "topk":
        return TopK(k=checks.config_value(cfg_path, cfg, "k", int)), weights, {}
    if arch == "gated":
        return Gated(), weights, {"r_mag": tensors["r_mag"].float(), "b_mag": tensors["b_mag"].float()}
    threshold = checks.float_tensor(weights_path, "threshold", tensors["threshold"]).to(torch.float64)
    log_threshold = threshold.clamp_min(SMALLEST_THRESHOLD).log().to(torch.float32)
    return JumpRelu(), weights, {"log_threshold": log_threshold}


def _scaling_factor(folder: pathlib.Path, cfg_path: pathlib.Path, cfg: dict) -> float | None:
    mode = checks.config_value(cfg_path, cfg, "normalize_activations", str, "none")
    if mode not in NORMALIZATIONS:
        raise CheckpointError(
            f"{cfg_path}: normalize_activations={mode!r} is not supported (a per-token normalisation saev "
            f"cannot express as weights); saev reads {', '.join(NORMALIZATIONS)}."
        )
    if mode == "none":
        return None
    scaler = folder / SCALER
    if not scaler.is_file():
        raise CheckpointError(
            f"{cfg_path}: normalize_activations='expected_average_only_in' needs the scaling factor its "
            f"trainer estimated, in {scaler} (missing). SAELens folds it into the weights at the end of "
            "training, so a finished SAE says 'none'; with SAELens' released SAEs, take the factor from "
            'its pretrained_saes.yaml and write it there as {"scaling_factor": FACTOR}.'
        )
    factor = checks.config_value(scaler, checks.read_json_object(scaler), "scaling_factor", float)
    if not 0 < factor < math.inf:
        raise CheckpointError(f"{scaler}: scaling_factor must be a positive number, got {factor!r}.")
    return factor


def _provenance(cfg: dict) -> dict:
    """ViT facts a SAELens config written by saev carries under metadata.saev (others have none)."""
    ours = cfg["metadata"].get("saev") if isinstance(cfg.get("metadata"), dict) else None
    prov = ours.get("provenance") if isinstance(ours, dict) else None
    if not isinstance(prov, dict):
        return {}
    known = config.Provenance.from_dict(prov).to_dict()
    return {k: v for k, v in known.items() if k not in ("source", "origin")}


def write(folder: pathlib.Path, sae: SparseAutoencoder) -> None:
    """`sae` as a SAELens folder that SAELens' `SAE.load_from_disk` reads, normalisation folded in."""
    weights = folding.fold_normalization(sae)
    arch, extra, fields = _to_saelens(folder, sae, weights)
    tensors = {"W_enc": weights["W_enc"], "W_dec": weights["W_dec"], "b_dec": weights["b_dec"]} | extra
    tensors["b_gate" if arch == "gated" else "b_enc"] = weights["b_enc"]
    origin = sae.provenance.origin or {}
    base = dict(origin["config"]) if origin.get("format") == "saelens" else {}
    # A SAELens original's own metadata wins, except saev's entry, which describes this SAE.
    ours = _metadata(sae)
    metadata = ours | dict(base.get("metadata") or {}) | {k: ours[k] for k in ("saev", "saev_version")}
    cfg = (
        base
        | {
            "architecture": arch,
            "d_in": sae.cfg.d_vit,
            "d_sae": sae.cfg.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": sae.cfg.subtract_b_dec,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": metadata,
        }
        | fields
    )
    folder.mkdir(parents=True, exist_ok=True)
    payload = st_save(
        {k: v.detach().cpu().to(torch.float32).contiguous() for k, v in sorted(tensors.items())}
    )
    with atomic_open(folder / WEIGHTS) as f:
        f.write(canonical_safetensors(payload))
    with atomic_open(folder / CFG) as f:
        f.write(json.dumps(cfg, indent=2).encode())


def _to_saelens(
    folder: pathlib.Path, sae: SparseAutoencoder, weights: dict[str, Tensor]
) -> tuple[str, dict[str, Tensor], dict]:
    """SAELens' architecture name, its own tensors and config fields for `sae`'s architecture."""
    act = sae.cfg.activation
    if isinstance(act, Relu):
        return "standard", {}, {}
    if isinstance(act, TopK):
        if not act.relu:
            raise CheckpointError(
                f"{folder}: this TopK keeps negative codes (reference V2), but SAELens' TopK applies ReLU to "
                "the kept values, so codes would differ; save it as native or saev-pt."
            )
        return "topk", {}, {"k": act.k, "rescale_acts_by_decoder_norm": False}
    if isinstance(act, JumpRelu):
        # exp in float64 rounds to the float32 whose log is the stored log-threshold again.
        log_threshold = typing.cast(JumpReluActivation, sae.activation).log_threshold
        return "jumprelu", {"threshold": log_threshold.detach().double().exp().float()}, {}
    if isinstance(act, BatchTopK):
        threshold = typing.cast(BatchTopKActivation, sae.activation).threshold
        return "jumprelu", {"threshold": threshold.detach().expand(sae.cfg.d_sae)}, {}
    if isinstance(act, Gated):
        return "gated", {"r_mag": weights["r_mag"], "b_mag": weights["b_mag"]}, {}
    raise CheckpointError(f"{folder}: SAELens has no architecture for {act}.")


def _metadata(sae: SparseAutoencoder) -> dict:
    """SAELens metadata fields from saev's provenance, and saev's own facts under 'saev'."""
    prov = sae.provenance
    # SAELens reads `metadata` only from configs that name the SAELens version (>= 6) they follow.
    out: dict = {"sae_lens_version": SAELENS_VERSION, "saev_version": saev.__version__}
    if prov.vit_family and prov.vit_ckpt:
        out["model_name"] = f"{prov.vit_family}/{prov.vit_ckpt}"
    if prov.layer is not None:
        out["hook_name"] = f"blocks.{prov.layer}.hook_resid_post"
    if prov.dataset:
        out["dataset_path"] = prov.dataset
    saev_facts: dict = {
        "config": sae.cfg.to_dict(),
        "provenance": {k: v for k, v in prov.to_dict().items() if k != "origin"},
    }
    if (norm := sae.normalization) is not None:
        saev_facts["normalization_folded"] = {
            "formula": "(x - act_mean) / act_scale, folded into W_enc, b_enc, W_dec and b_dec",
            "act_scale": norm.scale,
            "act_mean_norm": float(norm.mean.norm()),
        }
    out["saev"] = saev_facts
    return out

"""The reference saev `sae.pt`: one JSON header line (schema-less V0a/b/c, schema 1 or 2) followed by a
`torch.save` zip archive of the four weights, read with `torch.load(weights_only=True)`."""

import functools
import json
import pathlib
import reprlib

import torch

import saev
from saev.errors import CheckpointError
from saev.fileio import atomic_open
from saev.nn import config
from saev.nn.architectures import Activation
from saev.nn.architectures.relu import Relu
from saev.nn.architectures.topk import TopK
from saev.nn.formats import checks, folding
from saev.nn.modeling import SparseAutoencoder

MAX_HEADER_BYTES = 1 << 20


_header_value = functools.partial(checks.config_value, what="header field")

MAX_EXP_FACTOR = 1 << 16
"""Largest `exp_factor` a reference header may give (the public SAEs use 32): beyond it, a damaged header."""


def read(path: pathlib.Path, allow_nonfinite: bool) -> SparseAutoencoder:
    blob = checks.read_regular_file(path)
    newline = blob.find(b"\n", 0, MAX_HEADER_BYTES)
    if newline < 0:
        raise CheckpointError(f"{path}: not a saev checkpoint (no JSON header line, and not safetensors).")
    try:
        header = json.loads(blob[:newline].decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise CheckpointError(
            f"{path}: not a saev checkpoint (first line is not a JSON header: {err})."
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a saev checkpoint (header is JSON but not an object).")
    cfg, prov = _parse_header(path, header)
    state = checks.torch_load(path, blob[newline + 1 :])
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: weights archive holds a {type(state).__name__}, not a state dict.")
    checks.check_weights(path, cfg, state, allow_nonfinite)
    sae = SparseAutoencoder(cfg, prov, init=False)
    checks.copy_weights(sae, state)
    return sae


def _parse_header(path: pathlib.Path, header: dict) -> tuple[config.SaeConfig, config.Provenance]:
    """Map a reference header to a config and the forward it was trained with."""
    if "schema" not in header:
        return _legacy_config(path, header)
    schema = header["schema"]
    cfg = header.get("cfg")
    # JSON `true` and `1.0` equal 1 in Python, but no writer produced them.
    if type(schema) is not int or schema not in (1, 2):
        raise CheckpointError(
            f"{path}: unknown checkpoint schema {reprlib.repr(schema)}; "
            "saev reads schema-less headers and schemas 1 and 2."
        )
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: schema {schema} header has no 'cfg' object.")
    if schema == 1:
        activation = {"cls": _header_value(path, header, "cls", str, "Relu")}
        if "top_k" in cfg:
            activation["params"] = {"top_k": cfg["top_k"]}
    else:
        activation = cfg.get("activation", {"cls": "Relu", "params": {}})
    d_vit, d_sae = _shape_from(path, cfg)
    cfg_obj = checks.make_config(
        path,
        d_vit=d_vit,
        d_sae=d_sae,
        activation=_reference_activation(path, activation),
        subtract_b_dec=schema == 1,
        normalize_w_dec=_header_value(path, cfg, "normalize_w_dec", bool, True),
        remove_parallel_grads=_header_value(path, cfg, "remove_parallel_grads", bool, True),
        seed=_header_value(path, cfg, "seed", int, 0),
    )
    return cfg_obj, config.Provenance(source=f"V{schema}")


def _legacy_config(path: pathlib.Path, header: dict) -> tuple[config.SaeConfig, config.Provenance]:
    if "l1_coeff" in header or "use_ghost_grads" in header:
        variant, coeff = "V0a", _header_value(path, header, "l1_coeff", float, 4e-4)
    elif "sparsity_coeff" in header:
        variant, coeff = "V0b", _header_value(path, header, "sparsity_coeff", float, 4e-4)
    else:
        variant, coeff = "V0c", 4e-4
    d_vit, d_sae = _shape_from(path, header)
    cfg = checks.make_config(
        path,
        d_vit=d_vit,
        d_sae=d_sae,
        activation=Relu(),
        subtract_b_dec=True,
        sparsity_coeff=float(coeff),
        normalize_w_dec=_header_value(path, header, "normalize_w_dec", bool, True),
        remove_parallel_grads=_header_value(path, header, "remove_parallel_grads", bool, True),
        seed=_header_value(path, header, "seed", int, 0),
    )
    return cfg, config.Provenance(source=variant)


def _shape_from(path: pathlib.Path, cfg: dict) -> tuple[int, int]:
    if "d_vit" not in cfg:
        raise CheckpointError(f"{path}: header lacks 'd_vit' (keys: {sorted(cfg)}).")
    d_vit = _header_value(path, cfg, "d_vit", int, None)
    if cfg.get("d_sae") is not None:
        return d_vit, _header_value(path, cfg, "d_sae", int, None)
    if "exp_factor" not in cfg:
        raise CheckpointError(f"{path}: header gives neither 'd_sae' nor 'exp_factor' (keys: {sorted(cfg)}).")
    exp = _header_value(path, cfg, "exp_factor", float, None)
    # Bounded also so that d_vit * exp_factor stays a finite float.
    if not 0 < exp <= MAX_EXP_FACTOR:
        raise CheckpointError(
            f"{path}: header field 'exp_factor' must be in (0, {MAX_EXP_FACTOR}], got {exp!r}."
        )
    return d_vit, round(d_vit * exp)


def _reference_activation(path: pathlib.Path, activation: object) -> Activation:
    if not isinstance(activation, dict) or not isinstance(activation.get("params", {}), dict):
        raise CheckpointError(
            f"{path}: header field 'activation' must be an object {{'cls': NAME, 'params': {{...}}}}, "
            f"got {reprlib.repr(activation)}."
        )
    name = _header_value(path, activation, "cls", str, None)
    params = activation.get("params", {})
    if name == "Relu":
        return Relu()
    # The reference's BatchTopK keeps k per token at inference too, which is plain TopK without ReLU.
    if name in ("TopK", "BatchTopK"):
        return TopK(k=_header_value(path, params, "top_k", int, 32), relu=False)
    raise CheckpointError(
        f"{path}: unknown activation {reprlib.repr(name)} in header; saev reads Relu, TopK and BatchTopK."
    )


def dump(path: pathlib.Path, sae: SparseAutoencoder) -> None:
    cfg = sae.cfg
    if cfg.d_sae % cfg.d_vit:
        raise CheckpointError(
            f"{path}: the reference .pt format needs d_sae to be a multiple of d_vit ({cfg.d_sae} / {cfg.d_vit})."
        )
    base = {
        "d_vit": cfg.d_vit,
        "exp_factor": cfg.d_sae // cfg.d_vit,
        "n_reinit_samples": 0,
        "remove_parallel_grads": cfg.remove_parallel_grads,
        "normalize_w_dec": cfg.normalize_w_dec,
        "seed": cfg.seed,
    }
    act = cfg.activation
    # Schema 1 encodes x - b_dec with a ReLU; schema 2 encodes x with a ReLU or a sign-keeping TopK.
    if isinstance(act, Relu) and cfg.subtract_b_dec:
        header = {"schema": 1, "cfg": base, "cls": "Relu"}
    elif isinstance(act, Relu) and not cfg.subtract_b_dec:
        header = {"schema": 2, "cfg": base | {"activation": {"cls": "Relu", "params": {}}}}
    elif isinstance(act, TopK) and not act.relu and not cfg.subtract_b_dec:
        header = {"schema": 2, "cfg": base | {"activation": {"cls": "TopK", "params": {"top_k": act.k}}}}
    else:
        raise CheckpointError(
            f"{path}: the reference .pt format cannot express {act} with forward "
            f"{'x - b_dec' if cfg.subtract_b_dec else 'x'}; save it as .safetensors."
        )
    header |= {"commit": "unknown", "lib": f"saev {saev.__version__}"}
    # The format has no place for statistics: they are folded into the weights, so the file reads raw
    # activations (as the published reference SAEs, which ship without statistics, are used).
    folded = folding.fold_normalization(sae)
    state = {name: folded[name].cpu().contiguous() for name in checks.WEIGHT_NAMES}
    with atomic_open(path) as f:
        f.write((json.dumps(header) + "\n").encode("utf-8"))
        torch.save(state, f)

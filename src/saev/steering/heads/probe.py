"""`PROBE.safetensors`: a linear probe from `saev probe`, classification or segmentation."""

import dataclasses
import pathlib

from saev.activations.vit import Vit
from saev.errors import ConfigError
from saev.steering.heads.base import Head, HeadKind, Kind
from saev.steering.probe_format import load_probe


def probe_head(vit: Vit, path: pathlib.Path) -> Head:
    probe = load_probe(path)
    if (probe.vit_family, probe.vit_ckpt) != (vit.family, vit.ckpt):
        raise ConfigError(f"{path}: a probe of {probe.vit_family}/{probe.vit_ckpt}, not of {vit.name}.")
    if probe.weight_DC.shape[0] != vit.d_vit:
        raise ConfigError(
            f"{path}: reads {probe.weight_DC.shape[0]}-dim features; {vit.name} makes {vit.d_vit}."
        )
    if probe.task == "classification" and probe.pool == "cls" and not vit.layout.has_cls:
        raise ConfigError(f"{path}: reads the [CLS] token (pool 'cls'), which {vit.name} does not have.")
    weight, bias = (
        probe.weight_DC.to(next(vit.parameters()).device),
        probe.bias_C.to(next(vit.parameters()).device),
    )
    loaded = dataclasses.replace(probe, weight_DC=weight, bias_C=bias)
    n_prefix = vit.layout.n_prefix
    kind: Kind = "patch" if probe.task == "segmentation" else "image"
    return Head(str(path), probe.classes, kind, False, lambda x: loaded.logits(vit.features(x), n_prefix))


KIND = HeadKind(
    "probe",
    "PROBE.safetensors (saev probe)",
    "a linear probe trained by `saev probe`: classification, or segmentation from label masks",
    lambda spec: spec.endswith(".safetensors"),
    lambda spec, vit, prompt: probe_head(vit, pathlib.Path(spec)),
)

"""Testing what a latent does: splice an SAE into a running ViT, edit latents, read the model's
heads before and after, train linear probes, and measure steering and reconstruction."""

from saev.steering.edits import Edit, apply_edits, parse_edit
from saev.steering.heads import Head, open_head
from saev.steering.probe_format import LinearProbe, load_probe, save_probe
from saev.steering.splice import Prefix, SplicedVit

__all__ = [
    "Edit",
    "Head",
    "LinearProbe",
    "Prefix",
    "SplicedVit",
    "apply_edits",
    "load_probe",
    "open_head",
    "parse_edit",
    "save_probe",
]

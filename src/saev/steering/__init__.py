"""Testing what a latent does: splice an SAE into a running ViT, edit latents, read the model's
heads before and after, read which classes a latent's direction promotes (the logit lens), train
linear probes, and measure steering and reconstruction."""

from saev.steering.edits import Edit, apply_edits, parse_edit
from saev.steering.heads import Head, open_head
from saev.steering.lens import LatentLens, logit_lens
from saev.steering.probe_format import LinearProbe, load_probe, save_probe
from saev.steering.splice import Prefix, SplicedVit

__all__ = [
    "Edit",
    "Head",
    "LatentLens",
    "LinearProbe",
    "Prefix",
    "SplicedVit",
    "apply_edits",
    "load_probe",
    "logit_lens",
    "open_head",
    "parse_edit",
    "save_probe",
]

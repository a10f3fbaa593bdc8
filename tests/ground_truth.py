"""Synthetic activations built from a known dictionary, stored like ViT activations.

Each token is a positive combination of a few unit-norm atoms plus small noise; an SAE that
learns real features should have a decoder row close to every atom.
"""

import dataclasses
import pathlib

import numpy as np
import torch

from saev.data.writer import write_arrays


@dataclasses.dataclass(frozen=True)
class Dictionary:
    atoms_AD: np.ndarray
    store: pathlib.Path


def make_dictionary_store(
    root: pathlib.Path,
    *,
    n_atoms=512,
    d=64,
    n_tokens=200_000,
    active=(3, 5),
    noise=0.01,
    tokens_per_img=16,
    seed=0,
) -> Dictionary:
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((n_atoms, d)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    n_active = rng.integers(active[0], active[1] + 1, size=n_tokens)
    codes = np.zeros((n_tokens, n_atoms), dtype=np.float32)
    for t in range(active[1]):
        rows = np.nonzero(n_active > t)[0]
        codes[rows, rng.integers(0, n_atoms, size=len(rows))] += rng.uniform(0.5, 2.0, size=len(rows)).astype(
            np.float32
        )
    x = codes @ atoms + noise * rng.standard_normal((n_tokens, d)).astype(np.float32)
    acts = x.reshape(n_tokens // tokens_per_img, 1, tokens_per_img, d)
    store = write_arrays(
        root,
        acts,
        vit_family="synthetic",
        vit_ckpt=f"dictionary-{n_atoms}x{d}",
        layers=(0,),
        cls_token=False,
        data={"__class__": "Dictionary", "seed": seed},
    )
    return Dictionary(atoms, store)


def recovered_fraction(atoms_AD: np.ndarray, W_dec_SD: torch.Tensor, threshold: float = 0.9) -> float:
    """Fraction of atoms with a decoder row at cosine >= threshold."""
    dec = torch.nn.functional.normalize(W_dec_SD.detach().float(), dim=1)
    cos = torch.from_numpy(atoms_AD) @ dec.T
    return float((cos.max(dim=1).values >= threshold).float().mean())

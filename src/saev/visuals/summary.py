"""Which latents fire most on one image, by their strongest patch; and what a `saev visuals` folder
says about each latent (dense or not, its automatic name) for `saev inspect` and `saev serve`."""

import dataclasses
import pathlib
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from saev.errors import ConfigError
from saev.fileio import read_json
from saev.visuals.gallery import Name


@dataclasses.dataclass(frozen=True)
class LatentSummary:
    latent: int
    max: float
    sum: float
    active_patches: list[int]


def summarize(
    codes_PS: Float[Tensor, "patches d_sae"], top: int, hidden_S: Bool[Tensor, " d_sae"] | None = None
) -> list[LatentSummary]:
    """The `top` latents with the largest single-patch activation (ties: lower index), firing ones
    only, leaving out the `hidden_S` ones."""
    max_S = codes_PS.max(dim=0).values
    if hidden_S is not None:
        max_S = torch.where(hidden_S, 0.0, max_S)
    n = min(top, int((max_S > 0).sum()))
    order = torch.sort(max_S, descending=True, stable=True).indices[:n].tolist()
    return [
        LatentSummary(
            latent=s,
            max=float(max_S[s]),
            sum=float(codes_PS[:, s].sum()),
            active_patches=torch.nonzero(codes_PS[:, s] > 0).flatten().tolist(),
        )
        for s in order
    ]


Names = dict[int, Name | None]
"""Latent -> its name, or None when it was scored but left unexplained; latents that were never
named (no "name" key) are absent."""


def read_names(rows: list[dict[str, Any]], where: pathlib.Path) -> Names:
    """The names of latents.json's rows (`where` names the file in errors)."""
    return {
        row["latent"]: None
        if row["name"] is None
        else Name.from_json(row["name"], f"{where}: latent {row['latent']}")
        for row in rows
        if "name" in row
    }


def caption(name: Name | None) -> str:
    """`shape:circle F1 0.84`, or "unexplained" for a latent scored but left unnamed."""
    return "unexplained" if name is None else f"{name.text} F1 {name.f1:.2f}"


def visuals_rows(folder: pathlib.Path, d_sae: int) -> list[dict[str, Any]]:
    """The per-latent rows of a `saev visuals` folder's latents.json, one per latent in order, each
    with an int "latent"; anything else is a ConfigError naming the file."""
    path = folder / "latents.json"
    data = read_json(path, "list of latents")
    rows = data.get("latents") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f'{path}: not a saev visuals list of latents (no "latents" list of objects).')
    if [r.get("latent") for r in rows] != list(range(len(rows))):
        raise ConfigError(f"{path}: rows must list latents 0, 1, 2, ... in order, once each.")
    if len(rows) != d_sae:
        raise ConfigError(f"{path}: describes {len(rows)} latents, but the SAE has {d_sae}.")
    return rows


@dataclasses.dataclass(frozen=True)
class VisualsLatents:
    """What `saev inspect --visuals` reads: which latents are dense, and their names."""

    dense_S: Bool[Tensor, " d_sae"]
    names: Names

    @classmethod
    def read(cls, folder: pathlib.Path, d_sae: int) -> "VisualsLatents":
        rows = visuals_rows(folder, d_sae)
        bad = next((r["latent"] for r in rows if not isinstance(r.get("dense"), bool)), None)
        if bad is not None:
            raise ConfigError(
                f'{folder / "latents.json"}: latent {bad} has no true/false "dense"; rerun saev visuals.'
            )
        dense_S = torch.tensor([r["dense"] for r in rows], dtype=torch.bool)
        return cls(dense_S, read_names(rows, folder / "latents.json"))

"""Edits to SAE latents: set, add or scale a latent's code, in absolute units or in multiples of
the latent's largest activation, on chosen tokens.

Command-line syntax (`saev steer --edit`): `LATENT=V` sets the code to V, `LATENT=+V` adds V
(`+-V` subtracts), `LATENT=*V` scales it; a trailing `x` on V means "times the latent's largest
activation" (`686=-1x`: set latent 686 to minus its maximum, the original demos' suppression).
"""

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from saev.errors import ConfigError

Op = Literal["set", "add", "scale"]
Where = Literal["all", "active"]
"""Edit every selected token, or only those where the latent fires (code > 0) before the edit."""

_SYNTAX = re.compile(r"^\s*(\d+)\s*=\s*([+*]?)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(x?)\s*$")


@dataclasses.dataclass(frozen=True)
class Edit:
    latent: int
    op: Op
    value: float
    relative: bool = False
    """`value` is in multiples of the latent's largest activation (not for `scale`)."""

    def __post_init__(self):
        if self.latent < 0:
            raise ConfigError(f"edit of latent {self.latent}: latent indices are >= 0.")
        if self.op == "scale" and self.relative:
            raise ConfigError(f"edit of latent {self.latent}: a scale factor has no unit; drop the 'x'.")
        if not torch.isfinite(torch.tensor(self.value)):
            raise ConfigError(f"edit of latent {self.latent}: value {self.value} is not finite.")

    def __str__(self) -> str:
        prefix = {"set": "", "add": "+", "scale": "*"}[self.op]
        return f"{self.latent}={prefix}{self.value:g}{'x' if self.relative else ''}"


def parse_edit(text: str) -> Edit:
    """`686=-1x`, `12=0`, `5=+3`, `5=+-0.5x`, `7=*0.5` (see the module docstring)."""
    match = _SYNTAX.match(text)
    if match is None:
        raise ConfigError(
            f"--edit {text!r}: expected LATENT=V (set), LATENT=+V (add) or LATENT=*V (scale), with an "
            "optional x after V for multiples of the latent's largest activation, e.g. 686=-1x."
        )
    latent, sign, value, x = match.groups()
    ops: dict[str, Op] = {"": "set", "+": "add", "*": "scale"}
    op = ops[sign]
    return Edit(int(latent), op, float(value), relative=bool(x))


def describe(edits: Sequence[Edit]) -> str:
    """`edit 5=+3` or `edits 5=+3, 7=0`, for messages."""
    return f"edit{'s' if len(edits) > 1 else ''} {', '.join(map(str, edits))}"


def finite(x: Tensor) -> bool:
    """Whether every value of `x` is finite; min and max propagate NaN, so two scalars decide."""
    return x.numel() == 0 or all(math.isfinite(float(v)) for v in torch.aminmax(x.float()))


def check_latents(edits: Sequence[Edit], d_sae: int, where: str) -> None:
    bad = sorted({e.latent for e in edits if e.latent >= d_sae})
    if bad:
        raise ConfigError(f"edits of latents {bad}: {where} has {d_sae} latents (0..{d_sae - 1}).")


def apply_edits(
    codes_BNS: Float[Tensor, "batch n d_sae"],
    edits: Sequence[Edit],
    *,
    where: Where = "all",
    eligible_N: Bool[Tensor, " n"] | None = None,
    max_S: Float[Tensor, " d_sae"] | None = None,
) -> Float[Tensor, "batch n d_sae"]:
    """The codes after every edit, applied in order; `eligible_N` limits them to some tokens."""
    out = codes_BNS.clone()
    for e in edits:
        value = e.value
        if e.relative:
            if max_S is None:
                raise ConfigError(
                    f"edit {e}: 'x' units need each latent's largest activation (give --visuals)."
                )
            value = e.value * float(max_S[e.latent])
        if not abs(value) <= torch.finfo(codes_BNS.dtype).max:  # NaN fails too
            raise ConfigError(
                f"edit {e}: its value {value:.3g} is beyond the codes' {codes_BNS.dtype} range; use a smaller one."
            )
        code_BN = out[..., e.latent]
        mask_BN = (
            torch.ones_like(code_BN, dtype=torch.bool) if where == "all" else codes_BNS[..., e.latent] > 0
        )
        if eligible_N is not None:
            mask_BN = mask_BN & eligible_N
        new_BN = {"set": torch.full_like(code_BN, value), "add": code_BN + value, "scale": code_BN * value}[
            e.op
        ]
        out[..., e.latent] = torch.where(mask_BN, new_BN, code_BN)
    return out
